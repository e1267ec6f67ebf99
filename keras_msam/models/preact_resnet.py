"""Pre-activation ResNets for 32x32 images (CIFAR), as in the m-SAM papers' experiments.

Layout (He et al., "Identity Mappings in Deep Residual Networks"; the papers' CIFAR variant):

    conv3x3(width) -> stage 1 (width, stride 1) -> stage 2 (2 width, stride 2) -> ...
                   -> norm -> ReLU -> global average pool -> dense(num_classes)   (logits)

A block is ``out = conv(relu(norm(conv(relu(norm(x)))))) + shortcut`` where the shortcut is the
identity, or a 1x1 strided conv applied to ``relu(norm(x))`` when the shape changes. Convolutions have
no bias (every one is followed by a normalisation), use Kaiming-normal init (fan-in, gain sqrt 2,
untruncated) and the inputs are used as they are (in [0, 1], no normalisation layer).

`norm="group"` uses GroupNorm with ``groups = width // 2`` in every layer (32 for width 64), the
papers' choice; `norm="batch"` uses BatchNorm with PyTorch's defaults (momentum 0.1 -> Keras 0.9,
epsilon 1e-5).

`weight_decay=lambda` adds ``0.5 * lambda * ||w||^2`` over ALL weights (conv kernels, dense kernel and
bias, norm gammas and betas) as Keras regularisation losses, i.e. exactly SGD's coupled weight decay;
`SAMModel` includes these losses in both of its passes.
"""

import keras

BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
NORMS = ("batch", "group")


def kaiming_normal():
    """PyTorch's `kaiming_normal_` (fan-in, ReLU gain): N(0, 2 / fan_in), not truncated."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="untruncated_normal")


def _resolve_blocks(depth_or_blocks):
    if isinstance(depth_or_blocks, int) and not isinstance(depth_or_blocks, bool):
        if depth_or_blocks not in BLOCKS:
            raise ValueError(
                f"depth={depth_or_blocks} is not a known PreAct ResNet depth; use one of {sorted(BLOCKS)} "
                "or pass the blocks per stage explicitly, e.g. blocks=(2, 2, 2, 2)."
            )
        return BLOCKS[depth_or_blocks]
    blocks = tuple(depth_or_blocks)
    if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
        raise ValueError(
            f"blocks must be a non-empty sequence of positive ints (blocks per stage), e.g. (2, 2, 2, 2); got {depth_or_blocks!r}."
        )
    return blocks


class _Layers:
    """Factory for the layers of one network: shared init, regularizer and norm settings."""

    def __init__(self, norm, width, weight_decay):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got norm={norm!r}.")
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even int >= 2 (GroupNorm uses width // 2 groups); got width={width!r}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got weight_decay={weight_decay!r}.")
        self.norm_kind = norm
        self.groups = width // 2
        self.reg = keras.regularizers.L2(0.5 * weight_decay) if weight_decay > 0 else None

    def conv(self, filters, kernel, stride, name):
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding="same",
            use_bias=False,
            kernel_initializer=kaiming_normal(),
            kernel_regularizer=self.reg,
            name=name,
        )

    def norm(self, name):
        if self.norm_kind == "batch":
            return keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, gamma_regularizer=self.reg, beta_regularizer=self.reg, name=name
            )
        return keras.layers.GroupNormalization(
            groups=self.groups, epsilon=1e-5, gamma_regularizer=self.reg, beta_regularizer=self.reg, name=name
        )

    def dense(self, units, name):
        return keras.layers.Dense(units, kernel_regularizer=self.reg, bias_regularizer=self.reg, name=name)


def _block(layers, x, filters, stride, name):
    in_channels = x.shape[-1]
    out = keras.layers.ReLU(name=f"{name}_relu1")(layers.norm(f"{name}_norm1")(x))
    if stride != 1 or in_channels != filters:
        shortcut = layers.conv(filters, 1, stride, f"{name}_shortcut")(out)
    else:
        shortcut = x
    out = layers.conv(filters, 3, stride, f"{name}_conv1")(out)
    out = keras.layers.ReLU(name=f"{name}_relu2")(layers.norm(f"{name}_norm2")(out))
    out = layers.conv(filters, 3, 1, f"{name}_conv2")(out)
    return keras.layers.Add(name=f"{name}_add")([out, shortcut])


def preact_resnet(
    depth_or_blocks=18,
    num_classes=10,
    width=64,
    norm="batch",
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name=None,
):
    """A PreAct ResNet as a functional Keras model returning logits.

    Args:
        depth_or_blocks: 18 -> (2, 2, 2, 2), 34 -> (3, 4, 6, 3), or any sequence of blocks per stage
            (stage i has width * 2**i channels; every stage after the first halves the resolution).
        num_classes: size of the output layer (logits).
        width: channels of the first stage (64 in the papers).
        norm: "batch" (BatchNorm) or "group" (GroupNorm with width // 2 groups).
        input_shape: shape of one image, channels last.
        weight_decay: lambda of the 0.5 * lambda * ||w||^2 penalty on all weights (0: none).
        name: the model's name (default "preact_resnet{depth}" / "preact_resnet").
    """
    blocks = _resolve_blocks(depth_or_blocks)
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got num_classes={num_classes!r}.")
    layers = _Layers(norm, width, weight_decay)
    if name is None:
        depth = {v: k for k, v in BLOCKS.items()}.get(blocks)
        name = f"preact_resnet{depth}" if depth else "preact_resnet"
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.conv(width, 3, 1, "stem_conv")(inputs)
    for stage, num_blocks in enumerate(blocks):
        for index in range(num_blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x = _block(layers, x, width * 2**stage, stride, f"stage{stage + 1}_block{index + 1}")
    x = keras.layers.ReLU(name="final_relu")(layers.norm("final_norm")(x))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.dense(num_classes, "logits")(x)
    return keras.Model(inputs, outputs, name=name)


# name -> (blocks per stage, default width)
REGISTRY = {
    "resnet18": (BLOCKS[18], 64),
    "resnet34": (BLOCKS[34], 64),
    "tiny": ((1, 1), 8),
}


def get_model(name, num_classes=10, width=None, norm="batch", input_shape=(32, 32, 3), weight_decay=0.0):
    """Builds a registered model by name ("resnet18", "resnet34", "tiny"); width=None: its default."""
    if name not in REGISTRY:
        raise ValueError(f"Unknown model {name!r}; valid names: {sorted(REGISTRY)}.")
    blocks, default_width = REGISTRY[name]
    return preact_resnet(
        blocks,
        num_classes=num_classes,
        width=default_width if width is None else width,
        norm=norm,
        input_shape=input_shape,
        weight_decay=weight_decay,
        name=f"preact_{name}",
    )
