"""SAMModel under tf.distribute.MirroredStrategy (2 logical CPUs) and mixed precision."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam import SAMModel
from numpy_msam import msam_gradient
from sam_fixtures import LR, data, mlp, params_of


def dataset(x, y, sw, batch):
    return tf.data.Dataset.from_tensor_slices((x, y, sw)).batch(batch)


@pytest.mark.parametrize("normalize, rho", [(True, 0.1), (False, 0.3)])
def test_mirrored_step_equals_one_device_with_the_same_global_batch(normalize, rho):
    x, y, sw = data()  # 12 examples: 6 per replica, shards of m=3 never cross replicas
    # ReductionToOneDevice: collective all-reduce instance keys clash with strategies that other tests
    # in the same process created; the all-reduce algorithm is not what this test is about.
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        model = SAMModel(mlp(0.01), rho=rho, m=3, normalize=normalize)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    assert model.distribute_strategy.num_replicas_in_sync == 2
    before = params_of(model)
    logs = model.fit(dataset(x, y, sw, 12), epochs=1, verbose=0).history

    single = SAMModel(mlp(0.01), rho=rho, m=3, normalize=normalize)
    single.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    single_logs = single.fit(dataset(x, y, sw, 12), epochs=1, verbose=0).history

    expected = msam_gradient(before, x, y, sw, m=3, rho=rho, normalize=normalize, l2=0.01)
    for got, one, w, g in zip(params_of(model), params_of(single), before, expected):
        np.testing.assert_allclose(got, one, rtol=2e-5, atol=2e-6)
        np.testing.assert_allclose(got, w - LR * g, rtol=2e-5, atol=2e-6)
    for key in ("loss", "sam_loss", "eps_norm", "grad_norm"):
        assert logs[key][0] == pytest.approx(single_logs[key][0], rel=1e-5), key


def test_mixed_float16_trains_without_nan_and_close_to_float32():
    x, y, _ = data(n=48)
    results = {}
    for policy in ("float32", "mixed_float16"):
        keras.config.set_dtype_policy(policy)
        model = SAMModel(mlp(seed=5), rho=0.05, m=4)
        model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        history = model.fit(x, y, batch_size=16, epochs=4, verbose=0).history
        results[policy] = (params_of(model), history)
        if policy == "mixed_float16":
            assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
            assert model.inner.layers[0].compute_dtype == "float16"
    params16, history16 = results["mixed_float16"]
    params32, history32 = results["float32"]
    assert all(np.all(np.isfinite(p)) for p in params16)
    assert all(np.isfinite(v) for v in history16["sam_loss"])
    assert history16["loss"][-1] < history16["loss"][0]
    for a, b in zip(params16, params32):
        np.testing.assert_allclose(a, b, rtol=0.05, atol=5e-3)


def test_mixed_float16_overflowing_loss_scale_skips_the_step_and_lowers_the_scale():
    keras.config.set_dtype_policy("mixed_float16")
    x, y, _ = data()
    model = SAMModel(mlp(), rho=0.05, m=4)
    optimizer = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(LR), initial_scale=2.0**40)
    model.compile(optimizer=optimizer, loss="mse")
    before = params_of(model)
    model.train_on_batch(x, y)
    for a, b in zip(params_of(model), before):
        np.testing.assert_array_equal(a, b)  # fp16 gradients overflowed: the step was skipped
    assert float(optimizer.dynamic_scale.numpy()) == 2.0**39
    for _ in range(30):  # the scale comes down until the steps go through, with finite weights
        model.train_on_batch(x, y)
    assert float(optimizer.dynamic_scale.numpy()) < 2.0**20
    assert any(np.max(np.abs(a - b)) > 0 for a, b in zip(params_of(model), before))
    assert all(np.all(np.isfinite(p)) for p in params_of(model))


def test_mirrored_batchnorm_statistics_are_the_mean_over_replicas_on_every_replica():
    """Under MirroredStrategy each replica merges the statistics of its own shards; the moving statistics
    kept are their mean over the replicas (weighted by examples), the same on every replica."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(12, 3)).astype("float32") * 2 + 1, rng.normal(size=(12, 1)).astype("float32")

    def bn_net():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(momentum=0.5),
                                 keras.layers.Dense(1)])

    def stats(model):
        return [v.numpy() for v in model.non_trainable_variables if "moving" in v.path]

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = SAMModel(bn_net(), rho=0.1, m=3)
        mirrored.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    mirrored.fit(tf.data.Dataset.from_tensor_slices((x, y)).batch(12), epochs=1, verbose=0)

    halves = []
    for part in (slice(0, 6), slice(6, 12)):  # each replica's 6 examples on one device
        half = SAMModel(bn_net(), rho=0.1, m=3)
        half.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
        half.train_on_batch(x[part], y[part])
        halves.append(stats(half.inner))
    assert np.max(np.abs(halves[0][0] - halves[1][0])) > 1e-2  # the replicas' own statistics differ
    for index, variable in enumerate(v for v in mirrored.inner.non_trainable_variables if "moving" in v.path):
        copies = [c.numpy() for c in variable.value.values]
        assert len(copies) == 2
        for copy in copies:
            np.testing.assert_allclose(copy, (halves[0][index] + halves[1][index]) / 2, rtol=1e-5, atol=1e-6)
