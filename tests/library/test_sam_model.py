"""SAMModel's step against an independent NumPy m-SAM, and its behaviour on every Keras path."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from numpy_msam import loss_and_grad, msam_gradient
from sam_fixtures import B, LR, data, mlp, params_of, sam

CASES = {
    "n-sam": dict(m=None),
    "m4": dict(m=4),
    "1-sam": dict(m=1),
    "m5-remainder": dict(m=5),
    "unnormalized": dict(m=4, normalize=False, rho=0.3),
    "two-steps": dict(m=4, ascent_steps=2, step_mult=0.7),
    "adaptive": dict(m=4, adaptive=True, rho=0.5, adaptive_eta=0.01),
}


@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("case", sorted(CASES))
def test_one_step_matches_numpy(case, weighted, l2):
    settings = {"rho": 0.1, **CASES[case]}
    x, y, sw = data()
    sw = sw if weighted else None
    model = sam(mlp(l2), **settings)
    before = params_of(model)
    model.train_on_batch(x, y, sample_weight=sw)
    expected_grad = msam_gradient(
        before, x.astype("float64"), y.astype("float64"), None if sw is None else sw.astype("float64"),
        m=settings["m"], rho=settings["rho"], normalize=settings.get("normalize", True),
        ascent_steps=settings.get("ascent_steps", 1), step_mult=settings.get("step_mult", 1.0),
        adaptive=settings.get("adaptive", False), eta=settings.get("adaptive_eta", 0.0), l2=l2,
    )
    for after, w, g in zip(params_of(model), before, expected_grad):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)
    # The update really is SAM's, not ERM's: the ERM update differs by much more than the tolerance.
    _, erm = loss_and_grad(before, x, y, np.ones(B) if sw is None else sw, l2)
    assert max(np.max(np.abs(a - b)) for a, b in zip(expected_grad, erm)) > 1e-3


def test_rho_zero_is_exactly_the_keras_step():
    x, y, sw = data()
    plain = mlp(0.01)
    plain.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse", metrics=["mae"])
    model = SAMModel(mlp(0.01), rho=0.0, m=4)
    model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse", metrics=["mae"])
    for _ in range(3):
        logs_plain = plain.train_on_batch(x, y, sample_weight=sw, return_dict=True)
        logs = model.train_on_batch(x, y, sample_weight=sw, return_dict=True)
    for a, b in zip(params_of(model), params_of(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert logs["loss"] == pytest.approx(logs_plain["loss"], rel=1e-5)
    assert logs["mae"] == pytest.approx(logs_plain["mae"], rel=1e-5)
    assert logs["sharpness"] == pytest.approx(0.0, abs=1e-6) and logs["eps_norm"] == 0.0


def test_sam_disabled_runs_the_plain_step_and_can_be_switched_on_without_compiling_again():
    x, y, _ = data()
    plain = mlp()
    plain.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    model = sam(mlp(), rho=0.1, m=4, sam_enabled=False)
    plain.train_on_batch(x, y)
    model.train_on_batch(x, y)
    for a, b in zip(params_of(model), params_of(plain)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    model.sam_enabled = True  # no compile() needed: the train function is rebuilt
    before = params_of(model)
    model.train_on_batch(x, y)
    expected = msam_gradient(before, x, y, m=4, rho=0.1)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)


def test_rho_can_be_changed_between_steps_and_follows_a_schedule():
    x, y, _ = data()
    model = sam(mlp(), rho=0.1, m=4)
    model.train_on_batch(x, y)
    model.rho = 0.4
    before = params_of(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["rho"] == pytest.approx(0.4) and logs["eps_norm"] == pytest.approx(0.4, rel=1e-5)
    expected = msam_gradient(before, x, y, m=4, rho=0.4)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)

    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.05, 0.2])
    scheduled = sam(mlp(), rho=schedule, m=4)
    rhos = [scheduled.train_on_batch(x, y, return_dict=True)["rho"] for _ in range(3)]
    assert rhos == pytest.approx([0.05, 0.05, 0.2])


def test_logs_are_consistent():
    x, y, _ = data()
    model = sam(mlp(), rho=0.1, m=4)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["sharpness"] == pytest.approx(logs["sam_loss"] - logs["loss"], abs=1e-6)
    assert logs["eps_norm"] == pytest.approx(0.1, rel=1e-5)
    # loss at w is the shard-size-weighted mean of the shard losses = the batch loss for MSE
    expected_loss, _ = loss_and_grad(params_of(model.inner), x, y, np.ones(B), 0.0)
    fresh = sam(mlp(), rho=0.1, m=4)
    expected_loss, _ = loss_and_grad(params_of(fresh), x, y, np.ones(B), 0.0)
    assert fresh.train_on_batch(x, y, return_dict=True)["loss"] == pytest.approx(expected_loss, rel=1e-5)
    norms = [np.sqrt(sum(np.sum(g**2) for g in loss_and_grad(params_of(sam(mlp(), m=4)), x[s], y[s], np.ones(4), 0)[1]))
             for s in (slice(0, 4), slice(4, 8), slice(8, 12))]
    assert sam(mlp(), rho=0.1, m=4).train_on_batch(x, y, return_dict=True)["grad_norm"] == pytest.approx(np.mean(norms), rel=1e-5)


def test_jit_compile_matches_no_jit():
    x, y, sw = data()
    results = []
    for jit in (False, True):
        model = sam(mlp(0.01), jit=jit, rho=0.2, m=5, ascent_steps=2)
        for _ in range(2):
            model.train_on_batch(x, y, sample_weight=sw)
        results.append(params_of(model))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_fit_with_a_short_last_batch_weights_its_shards_by_size():
    """fit on 12 examples with batch 5 and m=3: batches 5 (shards 3+2), 5, and 2 (< m: one shard;
    traced with an unknown batch size)."""
    x, y, sw = data()
    model = sam(mlp(), rho=0.1, m=3)
    params = params_of(model)
    model.fit(x, y, sample_weight=sw, batch_size=5, epochs=1, shuffle=False, verbose=0)
    for s in (slice(0, 5), slice(5, 10), slice(10, 12)):
        g = msam_gradient(params, x[s], y[s], sw[s], m=3, rho=0.1)
        params = [p - LR * gi for p, gi in zip(params, g)]
    for a, b in zip(params_of(model), params):
        np.testing.assert_allclose(a, b, rtol=5e-5, atol=5e-6)


def test_a_static_batch_that_m_does_not_divide_warns():
    x, y, _ = data()
    with pytest.warns(UserWarning, match="m=5 does not divide the per-replica batch of 12"):
        sam(mlp(), m=5).train_on_batch(x, y)


def test_float64_models_train_in_float64():
    keras.config.set_dtype_policy("float64")
    try:
        x, y, _ = data()
        model = sam(mlp(), rho=0.1, m=4)
        before = params_of(model)
        model.train_on_batch(x.astype("float64"), y.astype("float64"))
        assert model.inner.trainable_variables[0].dtype == "float64"
        expected = msam_gradient(before, x, y, m=4, rho=0.1)
        for after, w, g in zip(params_of(model), before, expected):
            np.testing.assert_allclose(after, w - LR * g, rtol=1e-5, atol=1e-6)
    finally:
        keras.config.set_dtype_policy("float32")


def test_excluded_variables_are_not_perturbed():
    x, y, _ = data()
    model = sam(mlp(), rho=0.2, m=4, exclude=[r"dense_\d+/bias$|dense/bias$"])
    paths = [v.path for v in model.inner.trainable_variables]
    mask = [0.0 if p.endswith("bias") else 1.0 for p in paths]
    before = params_of(model)
    model.train_on_batch(x, y)
    expected = msam_gradient(before, x, y, m=4, rho=0.2, perturb_mask=mask)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=-0.1), "rho"),
        (dict(m=0), "m must"),
        (dict(m=2.5), "m must"),
        (dict(ascent_steps=0), "ascent_steps"),
        (dict(bn_in_ascent="eval"), "bn_in_ascent"),
    ],
)
def test_bad_settings_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAMModel(mlp(), **kwargs)


def test_m_larger_than_the_batch_is_an_error_naming_m():
    x, y, _ = data()
    model = sam(mlp(), m=16)
    with pytest.raises(ValueError, match="m=16 is larger than the per-replica batch size 12"):
        model.train_on_batch(x, y)


def test_evaluate_and_predict_are_the_inner_models():
    x, y, _ = data()
    inner = mlp()
    model = sam(inner, m=4)
    np.testing.assert_allclose(model.predict(x, verbose=0), inner.predict(x, verbose=0), rtol=1e-6)
    inner.compile(loss="mse")
    assert model.evaluate(x, y, verbose=0, return_dict=True)["loss"] == pytest.approx(inner.evaluate(x, y, verbose=0), rel=1e-6)


def test_save_and_load_round_trip(tmp_path):
    x, y, _ = data()
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    for rho in (0.07, schedule):
        model = SAMModel(mlp(0.01), rho=rho, m=4, normalize=False, ascent_steps=2, adaptive=True,
                         exclude=["bias"], bn_in_ascent="frozen", sam_enabled=False)
        model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=12, epochs=2, verbose=0)
        path = tmp_path / "model.keras"
        model.save(path)
        loaded = keras.saving.load_model(path)
        assert isinstance(loaded, SAMModel)
        for key in ("m", "normalize", "ascent_steps", "adaptive", "exclude", "bn_in_ascent", "sam_enabled"):
            assert loaded.get_config()[key] == model.get_config()[key], key
        assert loaded.rho == pytest.approx(model.rho)
        np.testing.assert_allclose(loaded.inner.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
        # training continues identically from the restored optimizer state
        model.train_on_batch(x, y)
        loaded.train_on_batch(x, y)
        for a, b in zip(params_of(loaded), params_of(model)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "shards_per_pass, max_unrolled", [(None, 16), (1, 16), (1, 2), (3, 16), (2, 2), ("auto", 16)]
)
def test_every_shard_engine_gives_the_same_step(monkeypatch, shards_per_pass, max_unrolled):
    """One vectorized pass, unrolled plain passes, a while loop of plain passes, unrolled vectorized
    passes, a while loop of vectorized passes."""
    from keras_msam import layouts

    monkeypatch.setattr(layouts, "MAX_UNROLLED_PASSES", max_unrolled)
    x, y, sw = data()
    model = sam(mlp(0.01), rho=0.1, m=1, shards_per_pass=shards_per_pass)
    before = params_of(model)
    model.train_on_batch(x, y, sample_weight=sw)
    expected = msam_gradient(before, x, y, sw, m=1, rho=0.1, l2=0.01)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)


def test_shards_per_pass_must_divide_the_number_of_shards():
    x, y, _ = data()
    with pytest.raises(ValueError, match="shards_per_pass=5 must divide the number of shards per step"):
        sam(mlp(), m=1, shards_per_pass=5).train_on_batch(x, y)


def test_logs_hold_the_gradient_cosine_and_m_and_evaluate_leaves_sam_logs_out():
    x, y, _ = data()
    model = sam(mlp(), rho=0.1, m=4)
    params = params_of(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    _, erm = loss_and_grad(params, x, y, np.ones(B), 0.0)
    g_sam = msam_gradient(params, x, y, m=4, rho=0.1)
    flat = lambda ts: np.concatenate([t.ravel() for t in ts])  # noqa: E731
    cosine = flat(erm) @ flat(g_sam) / (np.linalg.norm(flat(erm)) * np.linalg.norm(flat(g_sam)))
    assert logs["grad_cosine"] == pytest.approx(cosine, rel=1e-5) and cosine < 0.9999
    assert logs["m"] == 4 and sam(mlp(), m=None).train_on_batch(x, y, return_dict=True)["m"] == B
    history = model.fit(x, y, validation_data=(x, y), epochs=1, verbose=0).history
    assert "sharpness" in history and not any(k.startswith("val_") and k[4:] in ("sharpness", "rho", "m") for k in history)
    assert set(model.evaluate(x, y, verbose=0, return_dict=True)) == {"loss"}


def test_a_callback_switches_sam_on_in_the_middle_of_fit():
    x, y, _ = data()

    class OnAtEpoch1(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.model.sam_enabled = epoch >= 1

    model = sam(mlp(), rho=0.1, m=4, sam_enabled=False)
    history = model.fit(x, y, batch_size=12, epochs=3, verbose=0, callbacks=[OnAtEpoch1()]).history
    assert history["eps_norm"] == pytest.approx([0.0, 0.1, 0.1], abs=1e-6)
    assert history["sharpness"][0] == 0.0 and history["sharpness"][1] > 0


def test_shard_perturbations_are_each_shards_normalized_gradient():
    x, y, sw = data()
    model = sam(mlp(0.01), rho=0.3, m=4)
    params = params_of(model)
    eps = model.shard_perturbations(x, y, sw, max_shards=2)
    assert len(eps) == 2
    for j, eps_j in enumerate(eps):
        s = slice(4 * j, 4 * j + 4)
        _, g = loss_and_grad(params, x[s], y[s], sw[s], 0.01)
        norm = np.sqrt(sum(np.sum(t**2) for t in g))
        for got, gi in zip(eps_j, g):
            np.testing.assert_allclose(got.numpy(), 0.3 * gi / norm, rtol=1e-5, atol=1e-7)
