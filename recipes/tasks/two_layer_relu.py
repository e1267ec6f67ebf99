"""The two-layer ReLU network x -> relu(x W + b) a of the 1D-regression and teacher-student tasks.

Layer "hidden" (W [d, width], b [width] unless `hidden_bias=False`, ReLU) and layer "output"
(a [width, 1], no bias). The initial weights are given as NumPy arrays, so that each task draws them
exactly as its paper does.
"""

import keras
import numpy as np


def make_model(d, width, initial_weights=None, name="two_layer_relu", hidden_bias=True, dtype="float32"):
    """The d -> width -> 1 network, with `initial_weights` [W [d, width], b [width], a [width, 1]] ([W, a]
    without hidden bias; None: Keras' default initialisation)."""
    for key, value in (("d", d), ("width", width)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{key} must be a positive int; got {key}={value!r}.")
    inputs = keras.Input(shape=(int(d),), dtype=dtype)
    hidden = keras.layers.Dense(int(width), activation="relu", use_bias=hidden_bias, name="hidden", dtype=dtype)(inputs)
    output = keras.layers.Dense(1, use_bias=False, name="output", dtype=dtype)(hidden)
    model = keras.Model(inputs, output, name=name)
    if initial_weights is not None:
        expected = [(d, width), (width,), (width, 1)] if hidden_bias else [(d, width), (width, 1)]
        if [np.shape(w) for w in initial_weights] != expected:
            raise ValueError(
                f"initial_weights must have shapes {expected} ({'W, b, a' if hidden_bias else 'W, a'}); "
                f"got {[np.shape(w) for w in initial_weights]}."
            )
        model.set_weights([np.asarray(w, dtype) for w in initial_weights])
    return model


def predict(weights, x):
    """NumPy forward pass in float64 of the network with weights [W, b, a] (or [W, a]) on x [n, d] (or [n])."""
    weights = [np.asarray(w, np.float64) for w in weights]
    w1, w2 = weights[0], weights[-1]
    b1 = weights[1] if len(weights) == 3 else 0.0
    return np.maximum(np.asarray(x, np.float64).reshape(len(x), -1) @ w1 + b1, 0.0) @ w2
