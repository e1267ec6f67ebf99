"""Post-activation ResNets (the papers' `ResNet` with `BasicBlockResNet34`, deep_nets/models.py).

The papers' `resnet34` (understanding-sam) and `resnet18_plain` (sgd-sparse-features) are this network:

    conv3x3(width) -> norm -> ReLU -> stage 1 (width, stride 1) -> stage 2 (2 width, stride 2) -> ...
                   -> global average pool -> dense(num_classes)                     (logits)

A block is ``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))`` where the shortcut is the identity,
or a 1x1 strided conv followed by a norm when the shape changes. There is no norm after the last block
(unlike the PreAct nets). Init and padding as the papers' PyTorch code (`keras_msam.models.layers`);
BatchNorm by default, as in the papers (`norm="group"` is ours: GroupNorm with width // 2 groups).

Layer names: `stem_conv`, `stem_norm`, `stem_relu`; per block
`stage{s}_block{i}_{conv1,norm1,relu1,conv2,norm2,shortcut,shortcut_norm,add,out}` (`out`, the ReLU
after the addition, is the block's output: the papers' `return_block` 1-4 are the outputs of the last
block of stages 1-4); `pool` (the papers' block 5), `logits`.
"""

import keras

from keras_msam.models.layers import build_resnet


def _block(layers, x, filters, stride, name):
    in_channels = x.shape[-1]
    out = layers.conv(x, filters, 3, stride, f"{name}_conv1")
    out = keras.layers.ReLU(name=f"{name}_relu1")(layers.norm(out, f"{name}_norm1"))
    out = layers.norm(layers.conv(out, filters, 3, 1, f"{name}_conv2"), f"{name}_norm2")
    if stride != 1 or in_channels != filters:
        shortcut = layers.norm(layers.conv(x, filters, 1, stride, f"{name}_shortcut"), f"{name}_shortcut_norm")
    else:
        shortcut = x
    out = keras.layers.Add(name=f"{name}_add")([out, shortcut])
    return keras.layers.ReLU(name=f"{name}_out")(out)


def resnet(
    depth_or_blocks=18,
    num_classes=10,
    width=64,
    norm="batch",
    input_shape=(32, 32, 3),
    weight_decay=0.0,
    name=None,
):
    """A post-activation ResNet as a functional Keras model returning logits.

    Args: as `keras_msam.models.preact_resnet` (depth 18 -> (2, 2, 2, 2), 34 -> (3, 4, 6, 3)).
    """
    return build_resnet(_block, depth_or_blocks, num_classes, width, norm, input_shape, weight_decay, name,
                        post_activation=True)
