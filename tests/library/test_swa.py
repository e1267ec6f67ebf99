"""keras_msam.swa.WeightEMA: the papers' moving average (utils_train.moving_average every iteration,
from the initial weights), BatchNorm recomputed for the averaged network, save / load."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from keras_msam.interpolation import recompute_bn_statistics
from keras_msam.swa import WeightEMA


def _net():
    inputs = keras.Input((3,))
    hidden = keras.layers.BatchNormalization()(keras.layers.Dense(4)(inputs))
    return keras.Model(inputs, keras.layers.Dense(2)(keras.layers.ReLU()(hidden)))


class _Recorder(keras.callbacks.Callback):
    def __init__(self, network):
        super().__init__()
        self.network, self.seen = network, []

    def on_train_begin(self, logs=None):
        self.seen.append([v.numpy().copy() for v in self.network.trainable_variables])

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append([v.numpy().copy() for v in self.network.trainable_variables])


def test_average_follows_the_papers_recurrence_and_bn_is_recomputed(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 3)).astype("float32"), rng.integers(0, 2, size=40)
    net = _net()
    model = SAMModel(net, rho=0.05)  # the average is of the wrapped network's weights
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    tau = 0.8
    ema, recorder = WeightEMA(tau), _Recorder(net)
    model.fit(x, y, batch_size=10, epochs=2, callbacks=[recorder, ema], verbose=0, shuffle=False)
    assert ema.updates == 8 and len(recorder.seen) == 9
    # moving_average(model_swa, model, 1 - tau): w_swa = tau w_swa + (1 - tau) w, w_swa starts at w_0
    expected = [w.astype(np.float64) for w in recorder.seen[0]]
    for weights in recorder.seen[1:]:
        expected = [tau * e + (1 - tau) * w for e, w in zip(expected, weights)]
    for got, want in zip(ema.averaged(), expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    assert not np.allclose(ema.averaged()[0], net.trainable_variables[0].numpy())  # not just the last weights

    clone = keras.models.clone_model(net)
    ema.assign_to(clone, bn_data=(x, y), batch_size=16)
    for got, want in zip(clone.trainable_variables, expected):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    reference = keras.models.clone_model(net)
    reference.set_weights(ema.averaged_weights(reference))
    recompute_bn_statistics(reference, (x, y), batch_size=16, unbiased=True)
    for got, want in zip(clone.non_trainable_variables, reference.non_trainable_variables):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-6)
    assert not np.allclose(clone.non_trainable_variables[0].numpy(), net.non_trainable_variables[0].numpy())

    path = str(tmp_path / "ema.npz")
    ema.save(path)
    again = WeightEMA(tau)
    again.load(path, net)
    assert again.updates == 8
    for a, b in zip(again.averaged(), ema.averaged()):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\)"):
        WeightEMA(1.0)
    with pytest.raises(ValueError, match="no average yet"):
        WeightEMA().averaged()
    ema = WeightEMA()
    ema.start(_net())
    with pytest.raises(ValueError, match="not the .* averaged ones"):
        ema.averaged_weights(keras.Sequential([keras.Input((3,)), keras.layers.Dense(5)]))
