"""Which models may run the shards of a step in vectorized passes: an allowlist of layer classes.

A vectorized pass (`keras_msam.shards`, `Layout(per_pass > 1)`) runs p shards as one
`tf.vectorized_map`, every shard with its own copy of the weights, so TensorFlow's vectorizer
rewrites every op of the model for per-shard weights. For some layers the rewritten graph is wrong
or kills the process, and a crash cannot be caught. Measured on TensorFlow 2.21 on CPU, one m = 1 step
in vectorized against plain passes: `MultiHeadAttention` crashes the process without XLA
(segmentation fault) and differs by O(1) with XLA; `EinsumDense` differs by 1e-2 without XLA;
`LSTM` and `GRU` fail to compile with XLA; EfficientNetB0's `DepthwiseConv2D` with XLA asks for
604 GiB.

So vectorized passes run only for models built of the classes listed here (exact classes: a
subclass may change `call`), each of which the tests run in vectorized passes against an
independent per-shard reference (tests/library/test_model_zoo.py). A Sequential or functional model
is checked layer by layer (nested models too); a subclassed model's own `call`, or an op of a
functional graph other than the elementwise ones below, rules vectorized passes out. Such models run
plain passes, one shard at a time, which rewrite nothing. `register` adds classes a user has checked.
"""

import keras
from keras.src.models.functional import Functional
from keras.src.ops import numpy as ops_numpy

L = keras.layers

VECTORIZABLE = {
    L.InputLayer, L.Dense, L.Conv2D, L.BatchNormalization, L.GroupNormalization, L.LayerNormalization,
    L.Embedding, L.Dropout, L.Activation, L.ReLU, L.Flatten, L.Add, L.Concatenate, L.ZeroPadding2D,
    L.GlobalAveragePooling1D, L.GlobalAveragePooling2D, L.MaxPooling2D, L.AveragePooling2D,
}
# Ops of a functional graph between its layers: `x + y`, `x * y`, and the padding masks of an
# `Embedding(mask_zero=True)` (`token_ids != 0`) as layers merge them.
ELEMENTWISE_OPS = {ops_numpy.Add, ops_numpy.Subtract, ops_numpy.Multiply, ops_numpy.NotEqual,
                   ops_numpy.LogicalAnd, ops_numpy.LogicalOr}
_CONTAINERS = (Functional, keras.Sequential)


def register(*layer_classes):
    """Allows vectorized passes for models holding these layer classes. Check them first: a step with
    `SAMModel(..., shards_per_pass=None)` must equal one with `shards_per_pass=1` on your model."""
    for cls in layer_classes:
        if not (isinstance(cls, type) and issubclass(cls, keras.layers.Layer)):
            raise TypeError(f"register takes keras.layers.Layer subclasses; got {cls!r}.")
        VECTORIZABLE.add(cls)


def first_unsupported(model):
    """'layer NAME (CLASS)' for the first layer of `model` that rules vectorized passes out, else
    'operation NAME (CLASS)' for the first such op of a functional graph, or None."""
    layers = list(model._flatten_layers(include_self=True, recursive=True))
    for layer in layers:
        if type(layer) not in _CONTAINERS and type(layer) not in VECTORIZABLE:
            return f"layer {layer.name!r} ({type(layer).__name__})"
    for container in layers:
        for op in getattr(container, "operations", ()) if type(container) in _CONTAINERS else ():
            if not isinstance(op, keras.layers.Layer) and type(op) not in ELEMENTWISE_OPS:
                return f"operation {op.name!r} ({type(op).__name__})"
    return None
