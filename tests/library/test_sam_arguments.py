"""Bad or unusual arguments: a clear error at construction, or Keras' own behaviour; never a silent wrong step."""

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from numpy_msam import msam_gradient
from sam_fixtures import LR, data, mlp, params_of, sam


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rho=float("nan")), "rho must be a finite float >= 0"),
        (dict(rho=float("inf")), "rho must be a finite float >= 0"),
        (dict(rho="0.1x"), "rho must be a finite float >= 0"),
        (dict(exclude=["bias", "("]), r"exclude must hold regular expressions .*'\('"),
        (dict(m=True), "m must be a positive int"),
        (dict(shards_per_pass=0), "shards_per_pass must be a positive int"),
        (dict(step_mult=0.0), "step_mult must be > 0"),
    ],
)
def test_bad_settings_fail_at_construction_naming_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SAMModel(mlp(), **kwargs)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -0.1])
def test_assigning_a_bad_rho_is_an_error(value):
    model = sam(mlp(), rho=0.1)
    with pytest.raises(ValueError, match="rho must be a finite float >= 0"):
        model.rho = value
    assert model.rho == pytest.approx(0.1)


def test_integer_types_are_accepted_for_m_and_ascent_steps():
    model = SAMModel(mlp(), m=np.int64(4), ascent_steps=np.int32(2))
    assert model.m == 4 and type(model.m) is int and model.get_config()["ascent_steps"] == 2


def test_a_string_exclude_is_one_pattern():
    x, y, _ = data()
    model = sam(mlp(), rho=0.2, m=4, exclude="bias")
    assert model.exclude == ("bias",)
    mask = [0.0 if v.path.endswith("bias") else 1.0 for v in model.inner.trainable_variables]
    before = params_of(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    assert logs["eps_norm"] == pytest.approx(0.2, rel=1e-5)  # SAM did not silently become ERM
    expected = msam_gradient(before, x, y, m=4, rho=0.2, perturb_mask=mask)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)


def two_heads():
    inputs = keras.Input((3,))
    hidden = keras.layers.Dense(4, activation="tanh")(inputs)
    used = keras.layers.Dense(1, name="used")(hidden)
    unused = keras.layers.Dense(1, name="unused")(hidden)  # no loss depends on it
    return keras.Model(inputs, [used, unused])


@pytest.mark.parametrize("sam_enabled, rho", [(True, 0.1), (True, 0.0), (False, 0.1)])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd_weight_decay"])
def test_weights_without_gradient_are_left_alone_as_keras_does(optimizer, sam_enabled, rho):
    x, y, _ = data()
    model = SAMModel(two_heads(), rho=rho, m=4, sam_enabled=sam_enabled)
    opt = keras.optimizers.AdamW(0.1, weight_decay=0.5) if optimizer == "adamw" else keras.optimizers.SGD(0.1, weight_decay=0.5)
    model.compile(optimizer=opt, loss=["mse", None])
    unused = [v.numpy() for v in model.inner.get_layer("unused").weights]
    used = [v.numpy() for v in model.inner.get_layer("used").weights]
    with pytest.warns(UserWarning, match="Gradients do not exist for variables"):
        for _ in range(3):
            model.train_on_batch(x, (y[:, :1], y[:, :1]))
    for before, variable in zip(unused, model.inner.get_layer("unused").weights):
        np.testing.assert_array_equal(variable.numpy(), before)
    assert max(np.max(np.abs(b - v.numpy())) for b, v in zip(used, model.inner.get_layer("used").weights)) > 1e-3


def test_a_model_without_trainable_weights_warns_and_runs_like_keras():
    inner = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    inner.trainable = False
    model = SAMModel(inner, rho=0.1, m=4)
    model.compile(optimizer="sgd", loss="mse")
    x, y, _ = data()
    before = inner.get_weights()
    with pytest.warns(UserWarning, match="does not have any trainable weights"):
        logs = model.fit(x, y, batch_size=6, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][0])
    for a, b in zip(before, inner.get_weights()):
        np.testing.assert_array_equal(a, b)


def dropout_mlp():
    keras.utils.set_random_seed(4)
    return keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.5), keras.layers.Dense(2)]
    )


def test_resume_with_dropout_is_exact(tmp_path):
    """BackupAndRestore saves the wrapped model's dropout seed state with SAMModel (Keras does not)."""
    x, y, _ = data(n=24)

    def run(epochs, callbacks=()):
        model = SAMModel(dropout_mlp(), rho=0.1, m=4)
        model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
        model.fit(x, y, batch_size=8, epochs=epochs, shuffle=False, verbose=0, callbacks=list(callbacks))
        return model

    class Kill(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("killed")

    backup = keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))
    with pytest.raises(RuntimeError, match="killed"):
        run(4, [backup, Kill()])
    resumed = run(4, [keras.callbacks.BackupAndRestore(str(tmp_path / "backup"))])
    uninterrupted = run(4)
    seeds = [v.numpy() for v in uninterrupted.inner.non_trainable_variables if "seed" in v.path]
    assert seeds and all(s[1] > 0 for s in seeds)
    for a, b in zip(resumed.inner.get_weights(), uninterrupted.inner.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("project", [None, True, False])
def test_one_ascent_step_longer_than_rho_is_projected_onto_the_ball_unless_told_not_to(project):
    """normalize=True, ascent_steps=1, step_mult=2: the step of length 2 rho leaves the rho-ball; by default
    (project=None) and with project=True eps is scaled back onto it, with project=False it stays at 2 rho."""
    rho, m = 0.1, 4
    x, y, _ = data()
    model = sam(mlp(), rho=rho, m=m, ascent_steps=1, step_mult=2.0, project=project)
    before = params_of(model)
    logs = model.train_on_batch(x, y, return_dict=True)
    projected = msam_gradient(before, x, y, m=m, rho=rho, step_mult=2.0)  # step 2 rho g/||g||, then projected
    unprojected = msam_gradient(before, x, y, m=m, rho=2 * rho)  # eps = 2 rho g/||g||
    # the two references differ by far more than the tolerance below: the test tells them apart
    assert max(np.max(np.abs(a - b)) for a, b in zip(projected, unprojected)) > 1e-3
    radius, expected = (2 * rho, unprojected) if project is False else (rho, projected)
    assert logs["eps_norm"] == pytest.approx(radius, rel=1e-5)
    for after, w, g in zip(params_of(model), before, expected):
        np.testing.assert_allclose(after, w - LR * g, rtol=2e-5, atol=2e-6)
