"""Small models and data shared by the SAMModel tests (a tanh MLP that tests/numpy_msam.py mirrors)."""

import keras
import numpy as np

from keras_msam import SAMModel

LR = 0.1
B, D_IN, D_H, D_OUT = 12, 3, 5, 2


def mlp(l2=0.0, seed=0):
    reg = keras.regularizers.L2(l2) if l2 else None
    init = keras.initializers.GlorotNormal(seed=seed)
    return keras.Sequential(
        [
            keras.Input((D_IN,)),
            keras.layers.Dense(D_H, activation="tanh", kernel_regularizer=reg, kernel_initializer=init,
                               bias_initializer=keras.initializers.RandomNormal(seed=seed + 1)),
            keras.layers.Dense(D_OUT, kernel_regularizer=reg, kernel_initializer=init,
                               bias_initializer=keras.initializers.RandomNormal(seed=seed + 2)),
        ]
    )


def data(seed=0, n=B):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D_IN)).astype("float32")
    y = rng.normal(size=(n, D_OUT)).astype("float32")
    sw = rng.uniform(0.2, 2.0, size=n).astype("float32")
    return x, y, sw


def params_of(model):
    return [v.numpy().astype("float64") for v in model.trainable_variables]


def sam(inner, jit=False, **kwargs):
    model = SAMModel(inner, **kwargs)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse", jit_compile=jit)
    return model
