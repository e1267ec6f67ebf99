"""keras_msam.interpolation: BatchNorm recomputation, endpoints reproduced, weights restored, plot."""

import keras
import numpy as np
import pytest

from keras_msam.interpolation import evaluate_loss_error, interpolate, plot_interpolation, recompute_bn_statistics
from keras_msam.models import get_model
from small_problems import class_images


def test_recomputed_bn_statistics_are_the_data_average():
    model = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.99)])
    x = np.random.default_rng(0).normal(2.0, 3.0, size=(30, 4)).astype("float32")
    batches = recompute_bn_statistics(model, (x, np.zeros(30)), batch_size=10)
    layer = model.layers[0]
    assert batches == 3 and layer.momentum == 0.99  # momentum restored
    np.testing.assert_allclose(layer.moving_mean.numpy(), x.mean(0), rtol=1e-5)
    per_batch_var = np.mean([x[i : i + 10].var(0) for i in (0, 10, 20)], axis=0)
    np.testing.assert_allclose(layer.moving_variance.numpy(), per_batch_var, rtol=1e-5)


def test_recomputed_bn_statistics_follow_the_papers_bn_update():
    """utils_train.bn_update: reset to 0 / 1, then PyTorch momentum b / (n + b) per batch, i.e. the
    batch-size weighted average of the batch means and of the UNBIASED batch variances (PyTorch's)."""
    rng = np.random.default_rng(1)
    x = rng.normal(1.0, 2.0, size=(23, 5, 3, 2)).astype("float32")  # 23 = 10 + 10 + 3: a short last batch
    model = keras.Sequential([keras.Input((5, 3, 2)), keras.layers.BatchNormalization()])
    recompute_bn_statistics(model, (x, np.zeros(23)), batch_size=10, unbiased=True)
    running_mean, running_var, seen = np.zeros(2), np.ones(2), 0
    for start in (0, 10, 20):  # PyTorch's running-statistics update, as bn_update drives it
        batch = x[start : start + 10].astype(np.float64)
        size = len(batch)
        momentum = size / (seen + size)
        values = batch.reshape(-1, 2)
        running_mean = (1 - momentum) * running_mean + momentum * values.mean(0)
        running_var = (1 - momentum) * running_var + momentum * values.var(0, ddof=1)
        seen += size
    layer = model.layers[0]
    np.testing.assert_allclose(layer.moving_mean.numpy(), running_mean, rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance.numpy(), running_var, rtol=1e-5)
    recompute_bn_statistics(model, (x, np.zeros(23)), batch_size=10)  # Keras' biased variances
    biased = sum(len(x[s : s + 10]) * x[s : s + 10].reshape(-1, 2).var(0) for s in (0, 10, 20)) / 23
    np.testing.assert_allclose(layer.moving_variance.numpy(), biased, rtol=1e-5)


def test_interpolation_endpoints_reproduce_the_endpoint_losses(tmp_path):
    train, test = class_images(48, seed=0), class_images(32, seed=1)
    keras.utils.set_random_seed(1)
    model = get_model("tiny")
    keras.utils.set_random_seed(2)
    other = get_model("tiny")
    recompute_bn_statistics(model, train, batch_size=16)
    recompute_bn_statistics(other, train, batch_size=16)
    weights_a, weights_b = model.get_weights(), other.get_weights()
    ends = [evaluate_loss_error(model, train, batch_size=16), evaluate_loss_error(other, train, batch_size=16)]
    test_ends = [evaluate_loss_error(model, test, batch_size=16), evaluate_loss_error(other, test, batch_size=16)]
    assert abs(ends[0][0] - ends[1][0]) > 1e-3  # two genuinely different endpoints

    for recompute in (True, False):
        result = interpolate(model, weights_a, weights_b, [0.0, 0.5, 1.0], train, test, recompute_bn=recompute, batch_size=16)
        assert result["alpha"] == [0.0, 0.5, 1.0]
        for index, end in ((0, 0), (2, 1)):
            assert result["train_loss"][index] == pytest.approx(ends[end][0], rel=1e-5)
            assert result["train_error"][index] == pytest.approx(ends[end][1])
            assert result["test_loss"][index] == pytest.approx(test_ends[end][0], rel=1e-5)
        assert np.isfinite(result["train_loss"][1])
    for before, after in zip(weights_a, model.get_weights()):  # the model gets its own weights back
        np.testing.assert_array_equal(before, after)

    path = plot_interpolation(result, str(tmp_path / "interp.png"), title="a -> b")
    with open(path, "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"


def test_interpolation_rejects_mismatched_weights():
    model = get_model("tiny")
    with pytest.raises(ValueError, match="model.get_weights"):
        interpolate(model, model.get_weights()[:-1], model.get_weights(), [0.0], (np.zeros((2, 32, 32, 3)), [0, 1]), None)
