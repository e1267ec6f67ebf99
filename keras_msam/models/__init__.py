"""The networks of the papers' deep-net experiments, by the papers' names (`get_model(name)`).

| name | network (deep_nets/models.py of the papers) |
|---|---|
| `resnet18` | PreAct ResNet-18, BatchNorm |
| `resnet18_gn` | PreAct ResNet-18, GroupNorm (width // 2 groups): the papers' headline model |
| `resnet34` | **post-activation** ResNet-34, BatchNorm (also in the shortcut) |
| `resnet34_plain` | the same network (the sparse-features paper's name) |
| `resnet34preact` | PreAct ResNet-34, BatchNorm |
| `resnet34_gn` | PreAct ResNet-34, GroupNorm |
| `resnet_tiny`, `resnet_tiny_gn` | PreAct, one block per stage (1, 1, 1, 1), BatchNorm / GroupNorm |
| `resnet18_plain` | post-activation ResNet-18, BatchNorm (the sparse-features paper) |
| `tiny` | ours, for tests and smoke runs: PreAct, blocks (1, 1), width 8 |

All have width 64 by default (`tiny`: 8), take inputs of any size and channels (`input_shape`) and are
initialised as the papers' PyTorch code (`keras_msam.models.layers`).
"""

import dataclasses

from keras_msam.models.layers import NORMS, conv_initializer, dense_initializer
from keras_msam.models.preact_resnet import preact_resnet
from keras_msam.models.resnet import resnet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A registered network: its builder ("preact" or "post"), blocks per stage, norm and width."""

    kind: str
    blocks: tuple
    norm: str = "batch"
    width: int = 64
    fixed_norm: bool = False  # the name says the norm (`_gn`): another `norm` is an error


REGISTRY = {
    "resnet18": ModelSpec("preact", (2, 2, 2, 2)),
    "resnet18_gn": ModelSpec("preact", (2, 2, 2, 2), "group", fixed_norm=True),
    "resnet34": ModelSpec("post", (3, 4, 6, 3)),
    "resnet34_plain": ModelSpec("post", (3, 4, 6, 3)),
    "resnet34preact": ModelSpec("preact", (3, 4, 6, 3)),
    "resnet34_gn": ModelSpec("preact", (3, 4, 6, 3), "group", fixed_norm=True),
    "resnet_tiny": ModelSpec("preact", (1, 1, 1, 1)),
    "resnet_tiny_gn": ModelSpec("preact", (1, 1, 1, 1), "group", fixed_norm=True),
    "resnet18_plain": ModelSpec("post", (2, 2, 2, 2)),
    "tiny": ModelSpec("preact", (1, 1), width=8),
}
BUILDERS = {"preact": preact_resnet, "post": resnet}


def model_norm(name, norm=None):
    """The normalisation `get_model(name, norm=norm)` uses ("batch" or "group"); errors as get_model's."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown model {name!r}; valid names: {sorted(REGISTRY)}.")
    spec = REGISTRY[name]
    if norm is None:
        return spec.norm
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS} (or None: the model's own); got norm={norm!r}.")
    if spec.fixed_norm and norm != spec.norm:
        base = name[: -len("_gn")]
        raise ValueError(f"model {name!r} is the {spec.norm}-norm network by name; drop norm={norm!r} "
                         f"or use {base!r} (with norm='batch').")
    return norm


def get_model(name, num_classes=10, width=None, norm=None, input_shape=(32, 32, 3), weight_decay=0.0):
    """Builds a registered network (see the table in the module doc).

    Args:
        name: a key of `REGISTRY`.
        num_classes: logits.
        width: channels of the first stage (None: the model's default, 64; 8 for `tiny`).
        norm: None (the model's own), "batch" or "group" (GroupNorm with width // 2 groups); a `_gn`
            name takes only "group".
        input_shape: one image, channels last, e.g. (28, 28, 1).
        weight_decay: lambda of the 0.5 * lambda * ||w||^2 penalty on all weights.
    """
    norm = model_norm(name, norm)
    spec = REGISTRY[name]
    return BUILDERS[spec.kind](
        spec.blocks,
        num_classes=num_classes,
        width=spec.width if width is None else width,
        norm=norm,
        input_shape=input_shape,
        weight_decay=weight_decay,
        name=name,
    )


__all__ = ["REGISTRY", "ModelSpec", "conv_initializer", "dense_initializer", "get_model", "model_norm",
           "preact_resnet", "resnet"]
