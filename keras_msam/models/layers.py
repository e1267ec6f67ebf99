"""The layers of the papers' ResNets, initialised and padded as their PyTorch code does.

- Convolutions: no bias, PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, i.e.
  N(0, 2 / (out_channels * kh * kw)) untruncated (`conv_initializer`). A 3x3 convolution pads 1 pixel on
  every side, as PyTorch's `padding=1`: at stride 1 that is Keras' "same"; at stride 2 Keras' "same"
  would pad only the bottom and right (on an even input), shifting the branch one pixel against the 1x1
  strided shortcut, so it is `ZeroPadding2D(1)` then a "valid" convolution. 1x1 convolutions are
  "valid" (no padding).
- The final Dense layer: PyTorch's default `nn.Linear` init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
  (`dense_initializer`), and a zero bias (the papers zero it).
- BatchNorm (PyTorch's momentum 0.1 -> Keras 0.9, epsilon 1e-5) and GroupNorm (epsilon 1e-5) start
  with scale 1 and offset 0.
- `weight_decay=lambda` adds 0.5 * lambda * ||w||^2 over every weight (kernels, biases, scales, offsets)
  as Keras regularisation losses: SGD's coupled weight decay, as in the papers' objective.

`build_resnet` assembles both families (stem, stages, head) around their block functions.
"""

import keras

NORMS = ("batch", "group")
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}  # depth -> blocks per stage


def conv_initializer():
    """PyTorch's `kaiming_normal_(mode="fan_out", nonlinearity="relu")`: N(0, 2 / (C_out kh kw)), untruncated."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="untruncated_normal")


def dense_initializer():
    """PyTorch's default `nn.Linear` weight init, U(+-1 / sqrt(fan_in)) (kaiming_uniform with a = sqrt 5)."""
    return keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_in", distribution="uniform")


class LayerFactory:
    """The layers of one network: shared init, regularizer and normalisation settings."""

    def __init__(self, norm, width, weight_decay):
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}; got norm={norm!r}.")
        if not isinstance(width, int) or width < 2 or width % 2:
            raise ValueError(f"width must be an even int >= 2 (GroupNorm uses width // 2 groups); got width={width!r}.")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0; got weight_decay={weight_decay!r}.")
        self.norm_kind = norm
        self.groups = width // 2
        self.reg = keras.regularizers.L2(0.5 * weight_decay) if weight_decay > 0 else None

    def conv(self, x, filters, kernel, stride, name):
        """A bias-free convolution of x, padded as PyTorch's `padding=kernel // 2` (see the module doc)."""
        padding = "same" if kernel == 3 and stride == 1 else "valid"
        if kernel == 3 and stride != 1:
            x = keras.layers.ZeroPadding2D(1, name=f"{name}_pad")(x)
        elif kernel not in (1, 3):
            raise ValueError(f"only 1x1 and 3x3 convolutions are used here; got kernel={kernel!r}.")
        return keras.layers.Conv2D(
            filters,
            kernel,
            strides=stride,
            padding=padding,
            use_bias=False,
            kernel_initializer=conv_initializer(),
            kernel_regularizer=self.reg,
            name=name,
        )(x)

    def norm(self, x, name):
        if self.norm_kind == "batch":
            layer = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, gamma_regularizer=self.reg, beta_regularizer=self.reg, name=name
            )
        else:
            layer = keras.layers.GroupNormalization(
                groups=self.groups, epsilon=1e-5, gamma_regularizer=self.reg, beta_regularizer=self.reg, name=name
            )
        return layer(x)

    def dense(self, x, units, name):
        return keras.layers.Dense(
            units,
            kernel_initializer=dense_initializer(),
            bias_initializer="zeros",
            kernel_regularizer=self.reg,
            bias_regularizer=self.reg,
            name=name,
        )(x)


def build_resnet(block, depth_or_blocks, num_classes, width, norm, input_shape, weight_decay, name, post_activation):
    """The network around `block(layers, x, filters, stride, name)`: stem conv3x3(width) (+ norm and ReLU
    when `post_activation`), stages of width * 2**i channels, the first block of every stage after the
    first at stride 2, (+ norm and ReLU when not `post_activation`), global average pool, dense logits."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2; got num_classes={num_classes!r}.")
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be (height, width, channels) of positive ints; got input_shape={input_shape!r}.")
    blocks = _resolve_blocks(depth_or_blocks)
    layers = LayerFactory(norm, width, weight_decay)
    inputs = keras.Input(shape=shape, name="image")
    x = layers.conv(inputs, width, 3, 1, "stem_conv")
    if post_activation:
        x = keras.layers.ReLU(name="stem_relu")(layers.norm(x, "stem_norm"))
    for stage, num_blocks in enumerate(blocks):
        for index in range(num_blocks):
            stride = 2 if stage > 0 and index == 0 else 1
            x = block(layers, x, width * 2**stage, stride, f"stage{stage + 1}_block{index + 1}")
    if not post_activation:
        x = keras.layers.ReLU(name="final_relu")(layers.norm(x, "final_norm"))
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.dense(x, num_classes, "logits")
    if name is None:
        depth = {v: k for k, v in BLOCKS.items()}.get(blocks)
        name = ("resnet" if post_activation else "preact_resnet") + (str(depth) if depth else "")
    return keras.Model(inputs, outputs, name=name)


def _resolve_blocks(depth_or_blocks):
    """Blocks per stage from a depth of `BLOCKS` or an explicit sequence."""
    if isinstance(depth_or_blocks, int) and not isinstance(depth_or_blocks, bool):
        if depth_or_blocks not in BLOCKS:
            raise ValueError(
                f"depth={depth_or_blocks} is not a known ResNet depth; use one of {sorted(BLOCKS)} "
                "or pass the blocks per stage explicitly, e.g. blocks=(2, 2, 2, 2)."
            )
        return BLOCKS[depth_or_blocks]
    blocks = tuple(depth_or_blocks)
    if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
        raise ValueError(
            f"blocks must be a non-empty sequence of positive ints (blocks per stage), e.g. (2, 2, 2, 2); got {depth_or_blocks!r}."
        )
    return blocks
