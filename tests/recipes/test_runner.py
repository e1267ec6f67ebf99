"""recipes.runner: the compiled step loop against NumPy steps, its sampling, stopping and SAM switch; fit's
history read back."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam import SAMModel
from recipes import runner

N, D, LR = 12, 5, 0.1


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    return x, (x @ rng.normal(size=(D, 1))).astype("float32")


def linear_sam_model(rho=0.0, sam_enabled=False):
    """x -> x w (no bias, w = 0.1) with squared error, SGD(LR), wrapped in SAMModel (n-SAM)."""
    inner = keras.Sequential([keras.Input((D,)), keras.layers.Dense(1, use_bias=False, kernel_initializer="ones")])
    model = SAMModel(inner, rho=rho, sam_enabled=sam_enabled)
    model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    return model


def numpy_step(w, x, y, rho=0.0):
    """One (n-)SAM step on mean (x w - y)^2: normalized ascent, gradient at w + eps."""
    grad = lambda v: 2 * x.T @ (x @ v - y) / len(y)  # noqa: E731
    g = grad(w)
    eps = rho * g / np.linalg.norm(g) if rho else 0.0
    return w - LR * grad(w + eps)


def test_sampled_steps_are_numpy_sgd_steps_on_the_chosen_rows(data):
    x, y = data
    model = linear_sam_model()
    batches = runner.with_replacement(N, 6, batch_size=3, seed=4)
    curve = runner.StepLoop(model, x, y, jit_compile=False).run(6, chunk=2, batches=batches)
    w = np.ones((D, 1))
    for rows in batches:
        w = numpy_step(w, x[rows].astype(np.float64), y[rows].astype(np.float64))
    np.testing.assert_allclose(model.inner.get_weights()[0], w, rtol=1e-5)
    assert curve == {"step": [2, 4, 6]} and int(model.optimizer.iterations.numpy()) == 6  # no extra step


@pytest.mark.parametrize("jit_compile", [False, True])
def test_sam_switch_between_runs_is_honoured(data, jit_compile):
    """model.sam_enabled is read at every run: one trace per setting, full-batch steps."""
    x, y = data
    model = linear_sam_model(rho=0.5, sam_enabled=False)
    loop = runner.StepLoop(model, x, y, jit_compile=jit_compile)
    loop.run(1, chunk=1)
    model.sam_enabled = True
    loop.run(2, chunk=1)
    model.sam_enabled = False
    loop.run(1, chunk=1)
    w = np.ones((D, 1))
    for rho in (0.0, 0.5, 0.5, 0.0):
        w = numpy_step(w, x.astype(np.float64), y.astype(np.float64), rho)
    np.testing.assert_allclose(model.inner.get_weights()[0], w, rtol=1e-5)


def test_measure_stop_and_a_non_finite_loss_end_the_run(data):
    x, y = data

    def loss(model):
        with np.errstate(over="ignore", invalid="ignore"):
            return {"train_loss": float(np.mean((model.predict_on_batch(x) - y) ** 2))}

    model = linear_sam_model()
    target = loss(model)["train_loss"] / 10
    curve = runner.StepLoop(model, x, y).run(100, chunk=1, measure=loss, stop=lambda r: r["train_loss"] < target)
    assert 1 < len(curve["step"]) == len(curve["train_loss"]) < 100 and curve["step"][-1] == len(curve["step"])
    assert curve["train_loss"][-1] < target <= min(curve["train_loss"][:-1])

    diverging = linear_sam_model()
    diverging.optimizer.learning_rate.assign(50.0)
    curve = runner.StepLoop(diverging, x, y).run(100, chunk=10, measure=loss)
    assert not np.isfinite(curve["train_loss"][-1]) and len(curve["step"]) < 10


def test_run_checks_its_arguments(data):
    loop = runner.StepLoop(linear_sam_model(), *data)
    with pytest.raises(ValueError, match="steps must be a positive multiple of chunk=4"):
        loop.run(10, chunk=4)
    with pytest.raises(ValueError, match=r"one row of example indices per step \(8\); got 3"):
        loop.run(8, chunk=4, batches=np.zeros((3, 1), np.int32))


def test_shuffled_epochs_are_the_order_of_a_shuffled_tf_data_pipeline():
    order = runner.shuffled_epochs(7, 21, batch_size=1, seed=3)
    assert order.shape == (21, 1) and order.dtype == np.int32
    for epoch in order.reshape(3, 7):
        assert sorted(epoch) == list(range(7))  # every example once an epoch
    assert not np.array_equal(order[:7], order[7:14])  # reshuffled each epoch
    tf.random.set_seed(3)
    pipeline = tf.data.Dataset.range(7).shuffle(7, seed=3, reshuffle_each_iteration=True).repeat().batch(1)
    np.testing.assert_array_equal(order[:, 0], [int(b[0]) for b in pipeline.take(21)])
    batches = runner.shuffled_epochs(8, 4, batch_size=2, seed=0)
    assert sorted(batches.ravel()) == list(range(8))


def test_with_replacement_is_numpy_default_rng():
    draws = runner.with_replacement(20, 50, batch_size=2, seed=7)
    np.testing.assert_array_equal(draws.ravel(), np.random.default_rng(7).integers(20, size=100))


def test_chunk_for():
    assert runner.chunk_for(10_000) == 100
    assert runner.chunk_for(1000) == 10
    assert runner.chunk_for(50) == 1
    assert runner.chunk_for(1003) == 1  # a prime-ish count: the largest divisor <= 10
    assert runner.chunk_for(1000, chunk=7) == 7


def test_read_history_keeps_the_last_row_of_a_repeated_epoch(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss,lr\n0,2.0,0.1\n1,1.5,0.1\n1,1.4,0.1\n2,1.0,\n")
    assert runner.read_history(str(path)) == [
        {"epoch": 1, "loss": 2.0, "lr": 0.1},
        {"epoch": 2, "loss": 1.4, "lr": 0.1},
        {"epoch": 3, "loss": 1.0},
    ]
    assert runner.read_history(str(tmp_path / "missing.csv")) == []
