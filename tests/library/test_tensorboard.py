"""TensorBoard output of SAM runs, read back from the event files: scalars, eps histograms, HParams."""

import glob
import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from keras_msam import SAMModel
from keras_msam.tensorboard import EpsHistograms, SAMScalars, shard_eps
from keras_msam.tuning import SAMHyperModel, make_tuner
from small_problems import linear_model, regression

SAM_TAGS = ["sam/loss_at_w", "sam/loss_at_w_plus_eps", "sam/sharpness", "sam/grad_norm", "sam/eps_norm", "sam/rho",
            "sam/m", "sam/sam_enabled"]


def read_events(log_dir):
    """{tag: [(step, value as ndarray)]} and {tag: plugin name} of the event files in log_dir."""
    acc = event_accumulator.EventAccumulator(str(log_dir), size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    tags = acc.Tags()["tensors"]
    values = {t: [(e.step, tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(t)] for t in tags}
    plugins = {t: acc.SummaryMetadata(t).plugin_data.plugin_name for t in tags}
    return values, plugins


def linear_problem(m=2, rho=0.1):
    """A SAMModel around a linear model on 20 examples in 30 dimensions."""
    x, y, *_ = regression()
    model = SAMModel(linear_model(), rho=rho, m=m)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model, x, y


def test_sam_scalars_are_interval_means_of_the_logged_diagnostics(tmp_path):
    model, x, y = linear_problem(m=1, rho=0.1)
    history = model.fit(x, y, batch_size=5, epochs=2, verbose=0, shuffle=False,  # 4 steps an epoch
                        callbacks=[SAMScalars(tmp_path, every_n_steps=2)])
    values, plugins = read_events(tmp_path)
    for tag in SAM_TAGS:
        assert plugins[tag] == "scalars"
        assert [step for step, _ in values[tag]] == [2, 4, 6, 8], tag
        assert all(math.isfinite(float(v)) for _, v in values[tag]), tag
    scalar = {tag: np.array([float(v) for _, v in values[tag]]) for tag in SAM_TAGS}
    np.testing.assert_allclose(scalar["sam/rho"], 0.1, rtol=1e-6)
    np.testing.assert_allclose(scalar["sam/eps_norm"], 0.1, rtol=1e-5)  # normalized ascent: ||eps|| = rho
    np.testing.assert_array_equal(scalar["sam/m"], 1.0)
    np.testing.assert_array_equal(scalar["sam/sam_enabled"], 1.0)
    np.testing.assert_allclose(
        scalar["sam/sharpness"], scalar["sam/loss_at_w_plus_eps"] - scalar["sam/loss_at_w"], rtol=1e-4, atol=1e-7
    )
    # Two writes an epoch, each the mean of its 2 steps: their mean is the epoch's mean that fit reports.
    for key, tag in (("loss", "sam/loss_at_w"), ("sam_loss", "sam/loss_at_w_plus_eps"), ("grad_norm", "sam/grad_norm")):
        np.testing.assert_allclose(scalar[tag].reshape(2, 2).mean(1), history.history[key], rtol=1e-5)


def test_sam_scalars_write_grad_cosine_and_m_when_the_model_logs_them(tmp_path):
    model, *_ = linear_problem(m=None)
    callback = SAMScalars(tmp_path, every_n_steps=1)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    callback.on_train_batch_end(0, {"loss": 1.0, "sam_loss": 1.5, "grad_cosine": 0.25, "m": 7.0})
    callback.on_train_end()
    values, _ = read_events(tmp_path)
    assert float(values["sam/grad_cosine"][0][1]) == 0.25 and float(values["sam/m"][0][1]) == 7.0
    assert "sam/sharpness" not in values  # only what the logs hold is written


def test_sam_scalars_with_steps_per_execution_write_once_per_period(tmp_path):
    model, *_ = linear_problem(m=1)
    callback = SAMScalars(tmp_path, every_n_steps=4)
    callback.set_model(model)
    callback.on_epoch_begin(0)
    for last_step, running_mean in ((2, 1.0), (5, 2.0), (8, 3.0), (11, 3.0)):  # reports every 3 steps
        callback.on_train_batch_end(last_step, {"loss": running_mean})
    callback.on_train_end()
    values, _ = read_events(tmp_path)
    # Reports at steps 3, 6, 9, 12: writes at 6 (past 4), 9 (past 8) and 12; none at 3.
    steps, losses = zip(*((s, float(v)) for s, v in values["sam/loss_at_w"]))
    assert steps == (6, 9, 12)
    assert losses == pytest.approx((2.0, (9 * 3.0 - 6 * 2.0) / 3, 3.0))  # e.g. 5.0: the mean of steps 7..9


def test_eps_histograms_hold_one_norm_per_shard_and_layer(tmp_path):
    model, x, y = linear_problem(m=4, rho=0.1)
    callback = EpsHistograms(tmp_path, (x, y), every_n_epochs=2, group="variable")
    model.fit(x, y, batch_size=20, epochs=4, verbose=0, callbacks=[callback])
    values, plugins = read_events(tmp_path)
    tags = {"eps_norm/linear/kernel", "eps_norm/linear/bias", "eps_norm/all"}
    assert tags <= set(values) and all(plugins[t] == "histograms" for t in tags)
    for tag in tags:
        assert [step for step, _ in values[tag]] == [2, 4]  # epochs 2 and 4
        buckets = values[tag][-1][1]  # rows (left, right, count)
        assert buckets[:, 2].sum() == 5  # 20 examples / m=4: five shards
        assert np.all(np.isfinite(buckets))
    all_norms = values["eps_norm/all"][-1][1]
    assert all_norms[:, 0].min() == pytest.approx(0.1, rel=1e-5)  # every shard's ||eps|| is rho
    assert all_norms[:, 1].max() == pytest.approx(0.1, rel=1e-5)
    # The per-variable norms add up (in squares) to the whole perturbation of the shard.
    eps = shard_eps(model, x, y)
    for shard in eps:
        kernel, bias = (float(tf.norm(e)) for e in shard)
        assert kernel > 0 and bias > 0 and kernel**2 + bias**2 == pytest.approx(0.1**2, rel=1e-4)


@pytest.mark.slow
def test_tuner_trials_are_hparams_sessions(tmp_path):
    x, y, x_test, y_test = regression()
    hypermodel = SAMHyperModel(lambda: linear_model(), batch_size=20, loss="mse", lr_range=(0.05, 0.5))
    tuner = make_tuner("random", hypermodel, max_trials=2, directory=tmp_path / "tuner", seed=5)
    log_dir = tmp_path / "tb"
    tuner.search(x, y, validation_data=(x_test, y_test), epochs=1, verbose=0, callbacks=[SAMScalars(log_dir, every_n_steps=1, batch_size=20),
                                                 keras.callbacks.TensorBoard(log_dir, write_graph=False)])
    trials = tuner.oracle.trials
    run_dirs = sorted(glob.glob(str(log_dir / "*" / "execution0")))
    assert len(run_dirs) == len(trials) == 2
    for run_dir in run_dirs:
        values, plugins = read_events(run_dir)
        start = plugin_data_pb2.HParamsPluginData.FromString(hparams_content(run_dir, "_hparams_/session_start_info"))
        trial_id = run_dir.split("/")[-2]
        assert start.session_start_info.group_name == trial_id
        logged = {k: v.string_value or v.number_value for k, v in start.session_start_info.hparams.items()}
        expected = trials[trial_id].hyperparameters.values  # ERM trials have no rho / m (inactive)
        assert set(logged) == ({"method", "lr", "rho", "m"} if expected["method"] == "sam" else {"method", "lr"})
        assert logged == pytest.approx({k: expected[k] for k in logged})
        assert len(values["_hparams_/session_start_info"]) == 1  # one session, though two callbacks log there
        assert "_hparams_/session_end_info" in plugins
        assert all(tag in values for tag in SAM_TAGS)  # the trial's scalars sit in its session's run
        validation, _ = read_events(run_dir + "/validation")  # Keras' callback: the objective, val_loss
        assert float(validation["epoch_loss"][-1][1]) == pytest.approx(trials[trial_id].score, rel=1e-5)


def hparams_content(run_dir, tag):
    acc = event_accumulator.EventAccumulator(run_dir)
    acc.Reload()
    return acc.PluginTagToContent("hparams")[tag]
