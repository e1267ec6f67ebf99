"""Vectorized 2D convolutions with per-shard filters, for `tf.vectorized_map`.

TensorFlow's vectorizer (pfor) handles a convolution whose *input* differs per shard, but falls back to
a while loop of per-shard convolutions when the *filter* differs per shard (the perturbed pass of
m-SAM, where shard j runs at w + eps_j) and for per-shard filter gradients (the ascent pass). A loop of
small convolutions is slow, and very slow under XLA. This module registers converters for those cases
that write the convolution as im2col + one batched matmul over shards:

    patches_j = extract_patches(x_j)            [m * H' * W', kh * kw * C]
    y_j       = patches_j @ f_j                 (f_j reshaped to [kh * kw * C, O])
    df_j      = patches_j^T @ dy_j

For a stride-1 convolution the input gradient with per-shard filters is the same im2col product on dy
with the flipped, transposed filter; strided ones keep TensorFlow's per-shard loop. The patches are
strided slices of the padded input (XLA on CPU lowers `tf.image.extract_patches` to a one-hot
convolution). What this buys is measured in docs/performance.md. Only NHWC SAME/VALID convolutions are
handled; everything else goes to TensorFlow's own converters.
"""

import tensorflow as tf
from tensorflow.python.ops.parallel_for import pfor

_ORIGINAL = {}


def _conv_attrs(pfor_input):
    get = pfor_input.get_attr
    padding = get("padding")
    padding = padding.decode() if isinstance(padding, bytes) else padding
    data_format = get("data_format")
    data_format = data_format.decode() if isinstance(data_format, bytes) else data_format
    return dict(strides=list(get("strides")), dilations=list(get("dilations")), padding=padding), data_format


def _supported(pfor_input):
    attrs, data_format = _conv_attrs(pfor_input)
    return data_format == "NHWC" and attrs["padding"] in ("SAME", "VALID")


def _patches(x, kh, kw, attrs):
    """[N, H, W, C] -> [N, H', W', kh * kw * C] (row, column, channel order, like a conv filter).

    Built from kh * kw strided slices of the padded input: the same numbers as
    `tf.image.extract_patches`, which XLA on CPU lowers to a convolution with a one-hot filter
    (kh kw C times the work)."""
    _, h, w, _ = x.shape
    if h is None or w is None:  # not expected in a Keras conv net: static spatial shapes
        return tf.image.extract_patches(
            x, sizes=[1, kh, kw, 1], strides=attrs["strides"], rates=attrs["dilations"], padding=attrs["padding"]
        )
    (sh, sw), (dh, dw) = attrs["strides"][1:3], attrs["dilations"][1:3]
    span_h, span_w = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    if attrs["padding"] == "SAME":
        out_h, out_w = -(-h // sh), -(-w // sw)
        pad_h, pad_w = max((out_h - 1) * sh + span_h - h, 0), max((out_w - 1) * sw + span_w - w, 0)
        x = tf.pad(x, [[0, 0], [pad_h // 2, pad_h - pad_h // 2], [pad_w // 2, pad_w - pad_w // 2], [0, 0]])
    else:
        out_h, out_w = (h - span_h) // sh + 1, (w - span_w) // sw + 1
    pieces = [
        x[:, i * dh:i * dh + (out_h - 1) * sh + 1:sh, j * dw:j * dw + (out_w - 1) * sw + 1:sw, :]
        for i in range(kh)
        for j in range(kw)
    ]
    return tf.concat(pieces, axis=-1)


def _flat(x):
    """[k, N, ...] -> [k * N, ...] (static inner dimensions kept when known)"""
    inner = x.shape[2:]
    return tf.reshape(x, [-1] + inner.as_list() if inner.is_fully_defined() else tf.concat([[-1], tf.shape(x)[2:]], 0))


def _per_shard(x, k):
    """[k * N, ...] -> [k, N * prod(...)[:-1], last]"""
    return tf.reshape(x, tf.stack([k, -1, tf.shape(x)[-1]]))


def _conv2d(pfor_input):
    """Conv2D(input, filter) with a per-shard filter."""
    _, filter_stacked, _ = pfor_input.input(1)
    if not filter_stacked or not _supported(pfor_input):
        return _ORIGINAL["Conv2D"](pfor_input)
    pfor_input.stack_inputs()
    x, f = pfor_input.stacked_input(0), pfor_input.stacked_input(1)  # [k, N, H, W, C], [k, kh, kw, C, O]
    attrs, _ = _conv_attrs(pfor_input)
    k, kh, kw, out = tf.shape(f)[0], f.shape[1], f.shape[2], tf.shape(f)[4]
    patches = _patches(_flat(x), kh, kw, attrs)  # [k N, H', W', P]
    y = tf.matmul(_per_shard(patches, k), tf.reshape(f, tf.stack([k, -1, out])))  # [k, N H' W', O]
    shape = tf.concat([tf.shape(x)[:2], tf.shape(patches)[1:3], [out]], 0)
    return pfor.wrap(tf.reshape(y, shape), True)


def _conv2d_backprop_filter(pfor_input):
    """d filter of Conv2D for a per-shard input: per-shard filter gradients as one batched matmul."""
    _, input_stacked, _ = pfor_input.input(0)
    if not input_stacked or not _supported(pfor_input):
        return _ORIGINAL["Conv2DBackpropFilter"](pfor_input)
    pfor_input.stack_inputs(stack_indices=[0, 2])
    x, dy = pfor_input.stacked_input(0), pfor_input.stacked_input(2)  # [k, N, H, W, C], [k, N, H', W', O]
    filter_sizes = pfor_input.unstacked_input(1)
    attrs, _ = _conv_attrs(pfor_input)
    kh, kw = pfor_input.outputs[0].shape[:2]  # the original op's static filter shape
    k = tf.shape(x)[0]
    patches = _per_shard(_patches(_flat(x), kh, kw, attrs), k)  # [k, N H' W', P]
    df = tf.matmul(patches, _per_shard(_flat(dy), k), transpose_a=True)  # [k, P, O]
    return pfor.wrap(tf.reshape(df, tf.concat([[k], filter_sizes], 0)), True)


def _conv2d_backprop_input(pfor_input):
    """d input of a stride-1 Conv2D with a per-shard filter: a convolution of dy with the flipped,
    transposed filter (im2col + batched matmul); strided or dilated ones stay TensorFlow's."""
    _, filter_stacked, _ = pfor_input.input(1)
    attrs, data_format = _conv_attrs(pfor_input)
    kh, kw = pfor_input.op.inputs[1].shape[:2]
    plain = attrs["strides"] == [1, 1, 1, 1] and attrs["dilations"] == [1, 1, 1, 1]
    same_odd = attrs["padding"] == "SAME" and kh is not None and kh % 2 == 1 and kw % 2 == 1
    if not filter_stacked or data_format != "NHWC" or not plain or not (same_odd or attrs["padding"] == "VALID"):
        return _ORIGINAL["Conv2DBackpropInput"](pfor_input)
    pfor_input.stack_inputs(stack_indices=[1, 2])
    f, dy = pfor_input.stacked_input(1), pfor_input.stacked_input(2)  # [k, kh, kw, C, O], [k, N, H', W', O]
    k = tf.shape(f)[0]
    flipped = tf.transpose(tf.reverse(f, axis=[1, 2]), [0, 1, 2, 4, 3])  # [k, kh, kw, O, C]
    dy_flat = _flat(dy)
    if attrs["padding"] == "VALID":
        dy_flat = tf.pad(dy_flat, [[0, 0], [kh - 1, kh - 1], [kw - 1, kw - 1], [0, 0]])
    patches = _patches(dy_flat, kh, kw, attrs)  # [k N, H, W, kh kw O]
    dx = tf.matmul(_per_shard(patches, k), tf.reshape(flipped, tf.stack([k, -1, tf.shape(f)[3]])))
    shape = tf.concat([tf.shape(dy)[:2], tf.shape(patches)[1:3], tf.shape(f)[3:4]], 0)
    return pfor.wrap(tf.reshape(dx, shape), True)


def install():
    """Registers the converters (idempotent); TensorFlow's own ones handle every other case."""
    registry = pfor._pfor_converter_registry
    for op_type, converter in (
        ("Conv2D", _conv2d),
        ("Conv2DBackpropFilter", _conv2d_backprop_filter),
        ("Conv2DBackpropInput", _conv2d_backprop_input),
    ):
        if registry.get(op_type) is not converter:
            _ORIGINAL.setdefault(op_type, registry[op_type])
            registry[op_type] = converter
