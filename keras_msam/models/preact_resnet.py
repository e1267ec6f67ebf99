"""Pre-activation ResNets (the papers' `PreActResNet`, deep_nets/models.py), for images of any size.

Layout (He et al., "Identity Mappings in Deep Residual Networks"; the papers' CIFAR variant):

    conv3x3(width) -> stage 1 (width, stride 1) -> stage 2 (2 width, stride 2) -> ...
                   -> norm -> ReLU -> global average pool -> dense(num_classes)   (logits)

A block is ``out = conv(relu(norm(conv(relu(norm(x)))))) + shortcut`` where the shortcut is the
identity, or a 1x1 strided conv applied to ``relu(norm(x))`` when the shape changes. No norm or ReLU
after the stem conv; the inputs are used as they are (in [0, 1], no normalisation layer). Init and
padding as the papers' PyTorch code: see `keras_msam.models.layers`. The global average pool equals the
papers' `avg_pool2d(4)` on 32x32 inputs (4x4 final maps) and also serves other sizes (28x28 -> 4x4).

`norm="group"` uses GroupNorm with ``groups = width // 2`` in every layer (32 for width 64), the
papers' choice; `norm="batch"` BatchNorm with PyTorch's defaults.

Layer names: `stem_conv`; per block `stage{s}_block{i}_{norm1,relu1,conv1,norm2,relu2,conv2,shortcut,add}`
(`add` is the block's output; a stride-2 `conv1` is preceded by `..._conv1_pad`); `final_norm`,
`final_relu`, `pool`, `logits`.
"""

import keras

from keras_msam.models.layers import build_resnet


def _block(layers, x, filters, stride, name):
    in_channels = x.shape[-1]
    out = keras.layers.ReLU(name=f"{name}_relu1")(layers.norm(x, f"{name}_norm1"))
    if stride != 1 or in_channels != filters:
        shortcut = layers.conv(out, filters, 1, stride, f"{name}_shortcut")
    else:
        shortcut = x
    out = layers.conv(out, filters, 3, stride, f"{name}_conv1")
    out = keras.layers.ReLU(name=f"{name}_relu2")(layers.norm(out, f"{name}_norm2"))
    out = layers.conv(out, filters, 3, 1, f"{name}_conv2")
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
        input_shape: shape of one image, channels last (any size: e.g. (28, 28, 1)).
        weight_decay: lambda of the 0.5 * lambda * ||w||^2 penalty on all weights (0: none).
        name: the model's name (default "preact_resnet{depth}" / "preact_resnet").
    """
    return build_resnet(_block, depth_or_blocks, num_classes, width, norm, input_shape, weight_decay, name,
                        post_activation=False)
