"""The three-layer teacher-student task of "SGD with large step sizes learns sparse features"
(`fc_nets_multi_layer.ipynb`, `utils.get_data_multi_layer_relu_net`, `fc_nets.FCNet`).

Inputs on the unit sphere in d = 5 dimensions (n = 50, 1000 test points) labelled by a ReLU teacher
d -> 2 -> 2 -> 1 with biases; the student d -> 10 -> 10 -> 1 with biases, weights 0.8 N(0, 1) and
PyTorch's default biases U(+-1 / sqrt(fan_in)). The model's layers are "hidden1", "hidden2" (ReLU) and
"output" (linear, with bias).
"""

import keras
import numpy as np

from recipes.tasks import torch_inits
from recipes.tasks.teacher_student import sphere_inputs

LAYERS = ("hidden1", "hidden2", "output")


def _draw(rng, d, widths, scale):
    """[W1, b1, W2, b2, W3, b3]: weights scale * N(0, 1) (torch's [out, in] draw order), biases U(+-1/sqrt(in))."""
    sizes, weights = (d, *widths, 1), []
    for fan_in, fan_out in zip(sizes, sizes[1:]):
        weights.append((scale * rng.randn(fan_out, fan_in)).T.astype(np.float32))
        bound = 1.0 / np.sqrt(fan_in)
        weights.append(rng.uniform(-bound, bound, fan_out).astype(np.float32))
    return weights


def _check(d, widths):
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be a positive int; got d={d!r}.")
    if len(widths) != 2 or any(not isinstance(w, (int, np.integer)) or w < 1 for w in widths):
        raise ValueError(f"widths must be two positive ints (the hidden layers); got widths={widths!r}.")


def _stored(table):
    return [table[k].copy() for k in ("W1", "b1", "W2", "b2", "W3", "b3")]


def predict(weights, x):
    """NumPy forward pass (in the dtype of the weights) of the net with weights [W1, b1, W2, b2, W3, b3]."""
    w1, b1, w2, b2, w3, b3 = weights
    h = np.maximum(x @ w1 + b1, 0)
    return (np.maximum(h @ w2 + b2, 0) @ w3 + b3)[:, 0]


def make_data(n=50, d=5, widths=(2, 2), n_test=1000, seed=5):
    """(x [n, d], y [n], x_test, y_test, teacher weights), float32, as `get_data_multi_layer_relu_net(..., seed)`:
    the inputs from `np.random.RandomState(seed + 1)`; the teacher is torch's draw for the notebook's
    seed 5 (d = 5, widths (2, 2)), otherwise the same distribution from NumPy (after the inputs)."""
    _check(d, widths)
    for name, value in (("n", n), ("n_test", n_test)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int; got {name}={value!r}.")
    rng = np.random.RandomState(seed + 1)
    x, x_test = sphere_inputs(rng, n, d), sphere_inputs(rng, n_test, d)
    if (seed, d, tuple(widths)) == (5, 5, (2, 2)):
        teacher = _stored(torch_inits.THREE_LAYER_TEACHER)
    else:
        teacher = _draw(rng, d, widths, 1.0)
    return x, predict(teacher, x), x_test, predict(teacher, x_test), teacher


def initial_weights(d=5, widths=(10, 10), seed=5, scale=0.8):
    """The student [W1, b1, W2, b2, W3, b3]: torch's draw for the notebook's seed 5 (d = 5, widths (10, 10),
    scale 0.8), otherwise the same distribution from `np.random.RandomState(seed)`."""
    _check(d, widths)
    if (seed, d, tuple(widths), scale) == (5, 5, (10, 10), 0.8):
        return _stored(torch_inits.THREE_LAYER_STUDENT)
    return _draw(np.random.RandomState(seed), d, widths, scale)


def make_model(d=5, widths=(10, 10), weights=None, name="three_layer_relu"):
    """The d -> widths[0] -> widths[1] -> 1 ReLU net with biases, set to `weights` (None: Keras' init)."""
    _check(d, widths)
    inputs = keras.Input(shape=(int(d),))
    h = keras.layers.Dense(int(widths[0]), activation="relu", name=LAYERS[0])(inputs)
    h = keras.layers.Dense(int(widths[1]), activation="relu", name=LAYERS[1])(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name=LAYERS[2])(h), name=name)
    if weights is not None:
        model.set_weights([np.asarray(w, "float32") for w in weights])
    return model
