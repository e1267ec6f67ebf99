"""KerasTuner search over rho and m: the search space, the chosen settings, the tuners and the CLI."""

import math

import keras_tuner as kt
import numpy as np
import pytest
import tensorflow as tf

from keras_msam.tuning import SAMHyperModel, best_sam_settings, m_choices_for, make_tuner, trial_table
from small_problems import linear_model, regression

BATCH = 20  # the full batch (n = 20)
RHO_RANGE = (1e-3, 0.5)


@pytest.fixture(scope="module")
def data():
    return regression(n=BATCH)


def hypermodel_of(**kwargs):
    kwargs.setdefault("rho_range", RHO_RANGE)
    kwargs.setdefault("lr_range", (0.05, 0.5))
    return SAMHyperModel(lambda: linear_model(), batch_size=BATCH, loss="mse", **kwargs)


def search(tuner, data, epochs=1, steps=3):
    x, y, x_test, y_test = data
    train = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(BATCH)
    tuner.search(train, validation_data=(x_test, y_test), epochs=epochs, steps_per_epoch=steps, verbose=0)


# ----------------------------------------------------------------------------------- the m choices
def test_m_choices_are_the_divisors_of_the_per_replica_batch():
    assert m_choices_for(12, num_replicas=1) == [1, 2, 3, 4, 6, 12]
    assert m_choices_for(12, num_replicas=2) == [1, 2, 3, 6]  # each replica sees 6 examples
    assert m_choices_for(12, num_replicas=1, include_nsam=False) == [1, 2, 3, 4, 6]
    assert m_choices_for(12, num_replicas=1, m_choices=[4, 1, 2]) == [1, 2, 4]


def test_m_choices_reject_non_divisors_and_uneven_replicas():
    with pytest.raises(ValueError, match=r"m_choices \[5, 7\] do not divide the per-replica batch of 12"):
        m_choices_for(12, num_replicas=1, m_choices=[1, 5, 7])
    with pytest.raises(ValueError, match="not divisible by num_replicas=5"):
        m_choices_for(12, num_replicas=5)
    with pytest.raises(ValueError, match="include_nsam"):
        m_choices_for(12, num_replicas=1, m_choices=[12], include_nsam=False)


def test_declared_search_space():
    hypermodel = hypermodel_of(num_replicas=2, lr_range=0.1)
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    space = {p.name: p for p in hp.space}
    assert set(space) == {"method", "rho", "m", "lr"}
    assert list(space["method"].values) == ["sam", "erm"]
    assert list(space["m"].values) == [1, 2, 5, 10]  # divisors of 20 / 2 replicas; 3, 4, 6, ... excluded
    assert (space["rho"].min_value, space["rho"].max_value, space["rho"].sampling) == (*RHO_RANGE, "log")
    assert isinstance(space["lr"], kt.engine.hyperparameters.Fixed) and space["lr"].value == 0.1


def test_m_choices_follow_the_replicas_of_the_strategy():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])  # conftest: two logical CPUs
    with strategy.scope():
        hypermodel = hypermodel_of()
    assert (hypermodel.num_replicas, hypermodel.replica_batch, hypermodel.m_values) == (2, 10, [1, 2, 5, 10])
    with pytest.raises(ValueError, match=r"Pass SAMHyperModel\(\.\.\., num_replicas=2\)"):
        with strategy.scope():
            hypermodel_of(num_replicas=1).build(kt.HyperParameters())


def test_build_maps_the_hyperparameters_onto_sam_model():
    hypermodel = hypermodel_of()
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    hp.values.update({"method": "sam", "rho": 0.2, "m": 4, "lr": 0.3})
    model = hypermodel.build(hp)
    assert (model.m, model.rho, model.sam_enabled) == (4, pytest.approx(0.2), True)
    assert float(model.optimizer.learning_rate) == pytest.approx(0.3)
    hp.values["m"] = BATCH  # m = the whole batch is n-SAM, built as m=None
    assert hypermodel.build(hp).m is None
    hp.values["method"] = "erm"
    erm = hypermodel.build(hp)
    assert (erm.sam_enabled, erm.rho) == (False, 0.0)


def test_hypermodel_rejects_a_dataset_batched_differently(data):
    x, y, *_ = data
    hypermodel = hypermodel_of()
    hp = kt.HyperParameters()
    model = hypermodel.build(hp)
    with pytest.raises(ValueError, match="Batch the dataset by 20"):
        hypermodel.fit(hp, model, tf.data.Dataset.from_tensor_slices((x, y)).batch(10, drop_remainder=True))


def test_hypermodel_rejects_a_last_batch_smaller_than_m(data):
    x, y, *_ = data
    hypermodel = hypermodel_of(m_choices=[10])
    hp = kt.HyperParameters()
    hypermodel.build(hp)
    hp.values.update({"method": "sam", "m": 10})
    with pytest.raises(ValueError, match="end with a batch of 4, which m=10 examples per shard cannot split"):
        hypermodel.fit(hp, hypermodel.build(hp), np.concatenate([x, x[:4]]), np.concatenate([y, y[:4]]))


# ----------------------------------------------------------------------------------- searches
def _in_space(row):
    if row["method"] == "erm":
        return row["rho"] == 0.0 and row["m"] is None
    in_range = RHO_RANGE[0] * (1 - 1e-9) <= row["rho"] <= RHO_RANGE[1] * (1 + 1e-9)
    return in_range and (row["m"] is None or BATCH % row["m"] == 0)


@pytest.mark.slow
def test_random_search_reports_the_best_trial(tmp_path, data):
    tuner = make_tuner("random", hypermodel_of(), max_trials=3, directory=tmp_path, project_name="p", seed=3)
    search(tuner, data)
    best = best_sam_settings(tuner)
    rows = trial_table(tuner)
    assert len(rows) == 3 and all(_in_space(r) for r in rows)
    recorded = [t.metrics.get_best_value("val_loss") for t in tuner.oracle.trials.values()]
    assert math.isfinite(best["objective"]) and best["objective"] == pytest.approx(min(recorded), rel=1e-6)
    # best_sam_settings describes the best trial's model, as the hypermodel builds it.
    model = tuner.hypermodel.build(tuner.get_best_hyperparameters(1)[0])
    assert (model.m, model.sam_enabled) == (best["m"], best["method"] == "sam")
    assert model.rho == pytest.approx(best["rho"]) and set(best) >= {"rho", "m", "lr", "objective"}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bayesian", "hyperband"])
def test_bayesian_and_hyperband_search_the_same_space(tmp_path, data, kind):
    if kind == "bayesian":
        pytest.importorskip("sklearn", reason="BayesianOptimization needs keras-tuner[bayesian] (scikit-learn)")
    options = {"num_initial_points": 2, "max_trials": 3} if kind == "bayesian" else {"max_epochs": 2, "factor": 2}
    hypermodel = hypermodel_of(include_erm=False)
    tuner = make_tuner(kind, hypermodel, directory=tmp_path, project_name=kind, seed=1, **options)
    search(tuner, data, epochs=2)
    rows = trial_table(tuner)
    assert len(rows) >= 2 and all(r["method"] == "sam" and _in_space(r) for r in rows)
    assert best_sam_settings(tuner)["objective"] == min(r["objective"] for r in rows)


def test_make_tuner_names_the_missing_setting():
    with pytest.raises(ValueError, match="valid: \\['bayesian', 'hyperband', 'random'\\]"):
        make_tuner("grid", hypermodel_of())
    with pytest.raises(ValueError, match="Hyperband needs max_epochs"):
        make_tuner("hyperband", hypermodel_of())
