"""SAMModel on the models Keras users train (tests/model_zoo.py): transformers, keras.applications,
RNNs, KerasHub, several inputs and outputs, a subclassed model with `add_loss`.

For every model, cells of m (whole batch, 8, 1) x jit on and off x the layouts the model allows ("auto",
plain passes, one vectorized pass; `CELLS`): one step applies the m-SAM gradient of an independent
per-shard GradientTape loop, and `fit` on NumPy input with a short last batch completes. Vectorized passes run
only for the allowlisted layers (keras_msam.vectorization), never crash, and a vectorized setting on
another model is a clear error. Per-output losses and metrics are Keras' own."""

import gc
import re

import keras
import numpy as np
import pytest

import model_zoo
from keras_msam import SAMModel, layouts, vectorization
from model_zoo import BATCH, GradientRecorder

RHO = 0.1
MS = {"m-whole": None, "m8": 8, "m1": 1}
LAYOUTS = {"auto": "auto", "plain": 1, "vectorized": None}
# The cheap cases that the fast loop runs (python -m pytest -m "not slow"); CI runs them all.
FAST = {"transformer-m1-nojit-auto", "token_mixer-m8-nojit-vectorized", "small_cnn-m1-jit-vectorized",
        "two_inputs_two_outputs-m1-nojit-auto", "subclassed_add_loss-m8-jit-auto"}
FAST_TO_FIT = {"transformer", "two_inputs_two_outputs"}
# Models whose every case takes minutes on 2 CPUs (tracing 150-250 layers per pass; m=1 unrolls 16 such
# passes, over 5 minutes for MobileNetV2): cells that cover m and jit between them, not the whole matrix.
HEAVY = {
    "mobilenet_v2": {"m8-nojit-auto", "m-whole-jit-auto"},
    "efficientnet_b0": {"m8-nojit-auto"},
    "keras_hub_bert": {"m1-nojit-auto", "m8-jit-auto"},
    "bidirectional_gru": {"m1-nojit-auto", "m8-jit-auto"},  # 40 s for each m = 1 cell
}
_references = {}


@pytest.fixture(autouse=True)
def _free_the_models():
    """Each case traces large graphs (unrolled passes of 150-250 layers); free them before the next."""
    yield
    keras.backend.clear_session()
    gc.collect()


# The cells of the m x jit x layout matrix each model runs: every m, both jit settings and every layout
# the model allows, covered between the cells (the full product took over 20 minutes on 2 CPUs).
# A model that vectorized passes do not support runs plain passes whatever "auto" is, and an explicit
# vectorized setting is an error (tested below).
CELLS = {
    "plain only": {"m-whole-nojit-auto", "m8-jit-auto", "m1-nojit-auto", "m1-jit-auto"},
    "vectorizable": {"m-whole-nojit-auto", "m8-nojit-plain", "m8-nojit-vectorized", "m8-jit-vectorized",
                     "m1-nojit-auto", "m1-jit-plain", "m1-nojit-vectorized", "m1-jit-vectorized"},
}


def _matrix():
    for name in model_zoo.ZOO:
        kind = "vectorizable" if name in model_zoo.VECTORIZABLE_MODELS else "plain only"
        for cell in sorted(HEAVY.get(name, CELLS[kind])):
            m_id, jit, layout_id = cell.rsplit("-", 2)
            marks = () if f"{name}-{cell}" in FAST else (pytest.mark.slow,)
            yield pytest.param(name, m_id, jit == "jit", layout_id, id=f"{name}-{cell}", marks=marks)


def _reference(name, m):
    """(initial weights, reference m-SAM gradient of the first batch), once per model and m."""
    if (name, m) not in _references:
        case = model_zoo.build(name, dtype="float64")
        model = model_zoo.without_dropout(case.model)
        batch = model_zoo.take((case.x, case.y), slice(0, BATCH))
        _references[name, m] = ([v.numpy() for v in model.weights],
                                model_zoo.reference_sam_gradient(model, case.loss_fn, *batch, m=m, rho=RHO))
    return _references[name, m]


def _relative_error(got, want):
    diff = np.sqrt(sum(np.sum((np.asarray(g, np.float64) - w) ** 2) for g, w in zip(got, want)))
    return diff / np.sqrt(sum(np.sum(w ** 2) for w in want))


class FirstStepGradients(keras.callbacks.Callback):
    """The gradients the first step of `fit` applied (recorded by model_zoo.GradientRecorder)."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            optimizer = self.model.optimizer
            self.grads = [optimizer.recorded[optimizer._get_variable_index(v)].numpy()
                          for v in self.model.inner.trainable_variables]


@pytest.mark.parametrize("name, m_id, jit, layout_id", _matrix())
def test_the_first_step_equals_the_reference_and_fit_completes(name, m_id, jit, layout_id):
    """`fit` on NumPy input with a short last batch (16, 16, 3 examples): its first step applies the
    reference m-SAM gradient (1e-5 relative, over all weights), and every weight stays finite.

    In float64: at initialisation these models amplify rounding by 10^3-10^4 (a 1e-6 relative change
    of MobileNetV2's input moves its float32 m = 8 SAM gradient by 7%), so two float32 computations of
    the same step differ by 1e-3 or more; in float64 they agree to 1e-10."""
    if name == "keras_hub_bert":
        pytest.importorskip("keras_hub")
    initial, expected = _reference(name, MS[m_id])
    case = model_zoo.build(name, dtype="float64")
    model = SAMModel(model_zoo.without_dropout(case.model), rho=RHO, m=MS[m_id], shards_per_pass=LAYOUTS[layout_id])
    model.compile(optimizer=GradientRecorder(0.01), jit_compile=jit, **case.compile_kwargs)
    model.inner.set_weights(initial)
    first_step = FirstStepGradients()
    history = model.fit(case.x, case.y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0,
                        callbacks=[first_step]).history
    assert _relative_error(first_step.grads, expected) < 1e-5
    assert model.optimizer.iterations.numpy() == 3 and np.isfinite(history["loss"][0])
    assert all(np.all(np.isfinite(v.numpy())) for v in model.inner.weights)
    if name not in model_zoo.VECTORIZABLE_MODELS:
        assert all(layout.per_pass == 1 for layout in model.shard_layouts.values())


@pytest.mark.parametrize("name", sorted(model_zoo.ZOO))
def test_vectorized_passes_are_allowed_exactly_for_the_allowlisted_models(name):
    if name == "keras_hub_bert":
        pytest.importorskip("keras_hub")
    model = model_zoo.build(name).model
    unsupported = vectorization.first_unsupported(model)
    assert (unsupported is None) == (name in model_zoo.VECTORIZABLE_MODELS), unsupported
    if unsupported is not None:
        for shards_per_pass in (None, 4):
            with pytest.raises(ValueError, match=rf"shards_per_pass={shards_per_pass} asks for vectorized passes.*"
                                                 r"use shards_per_pass=1"):
                SAMModel(model, rho=RHO, m=1, shards_per_pass=shards_per_pass)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in FAST_TO_FIT else (pytest.mark.slow,))
                                  for n in model_zoo.ZOO if n not in ("mobilenet_v2", "efficientnet_b0")])
def test_fit_with_dropout_and_the_default_layout(name):
    """The models as users have them (float32, dropout on), m=8, the default shards_per_pass, Adam: every
    step ascends by exactly rho, and the losses and weights stay finite. (MobileNetV2 and EfficientNetB0,
    whose dropout is their head's and EfficientNet's stochastic depth, take 1.5-2 minutes here: left to
    the README's MobileNetV2 snippet.)"""
    if name == "keras_hub_bert":
        pytest.importorskip("keras_hub")
    case = model_zoo.build(name)
    model = SAMModel(case.model, rho=0.05, m=8)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), **case.compile_kwargs)
    initial = [v.numpy() for v in model.inner.trainable_variables]
    history = model.fit(case.x, case.y, batch_size=BATCH, epochs=2, verbose=0).history
    np.testing.assert_allclose(history["eps_norm"], 0.05, rtol=1e-5)
    assert np.all(np.isfinite(history["loss"])) and np.all(np.isfinite(history["sam_loss"]))
    assert all(np.all(np.isfinite(v.numpy())) for v in model.inner.weights)
    assert max(np.max(np.abs(v.numpy() - w)) for v, w in zip(model.inner.trainable_variables, initial)) > 1e-4


def test_every_allowlisted_layer_runs_vectorized_in_the_zoo():
    """The allowlist holds no class that the vectorized cases above do not run."""
    covered = set()
    for name in model_zoo.VECTORIZABLE_MODELS:
        model = model_zoo.build(name).model
        covered |= {type(layer) for layer in model._flatten_layers(include_self=False, recursive=True)}
    allowlist = {cls for cls in vectorization.VECTORIZABLE if cls.__module__.startswith("keras.")}  # not register()'s
    assert allowlist <= covered, allowlist - covered


def test_multi_head_attention_at_m1_runs_with_the_defaults_and_says_why_plain():
    """The smallest model that used to crash the process: attention at m=1 without XLA, default layout."""
    inputs = keras.Input((32, 64))
    x = keras.layers.MultiHeadAttention(4, 16)(inputs, inputs)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(x))
    model = SAMModel(keras.Model(inputs, outputs), rho=0.05, m=1)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning) as records:
        history = model.fit(rng.normal(size=(128, 32, 64)).astype("float32"), rng.integers(0, 2, 128),
                            batch_size=64, epochs=2, verbose=0).history
    assert np.all(np.isfinite(history["loss"])) and history["sharpness"][-1] > 0
    printed = "\n".join(str(r.message) for r in records if "plain passes" in str(r.message))
    assert printed.count("plain passes") == 1
    assert re.search(r"layer 'multi_head_attention\w*' \(MultiHeadAttention\) is not one that vectorized passes support", printed)
    assert model.shard_layouts == {64: layouts.plain(64)}


def test_register_allows_vectorized_passes_for_a_checked_class():
    inputs = keras.Input((6, 4))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling1D()(keras.layers.Conv1D(3, 3)(inputs)))
    model = keras.Model(inputs, outputs)
    assert vectorization.first_unsupported(model) == "layer 'conv1d' (Conv1D)"
    with pytest.raises(ValueError, match="shards_per_pass=2 asks for vectorized passes"):
        SAMModel(model, m=1, shards_per_pass=2)
    with pytest.raises(TypeError, match="keras.layers.Layer subclasses"):
        vectorization.register("Conv1D")
    try:
        vectorization.register(keras.layers.Conv1D)
        assert SAMModel(model, m=1, shards_per_pass=2).vectorizable
    finally:
        vectorization.VECTORIZABLE.discard(keras.layers.Conv1D)


OUTPUT_LOGS = ("loss", "cls_loss", "reg_loss", "cls_accuracy", "reg_mean_absolute_error")
ROWS = slice(0, 2 * BATCH)  # batches that divide the data: Keras' own per-output logs are right there


def _keras_and_sam_histories(rho, learning_rate, m, shards_per_pass, epochs):
    histories = []
    for wrap in (False, True):
        case = model_zoo.build("two_inputs_two_outputs")
        model = model_zoo.without_dropout(case.model)
        if wrap:
            model = SAMModel(model, rho=rho, m=m, shards_per_pass=shards_per_pass)
        model.compile(optimizer=keras.optimizers.SGD(learning_rate), **case.compile_kwargs)
        x, y = model_zoo.take((case.x, case.y), ROWS)
        histories.append(model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0).history)
    return histories


@pytest.mark.parametrize("layout_id", ["plain", "vectorized", "auto"])
def test_per_output_losses_and_metrics_are_keras_own_at_lr_0(layout_id):
    """Weights that do not move (lr 0): every per-output loss and metric of every epoch equals plain
    Keras', whatever rho and the layout (the passes at w + eps do not leak into them; under "auto" the
    later epochs run the layout the tuning chose)."""
    keras_history, sam_history = _keras_and_sam_histories(0.5, 0.0, 1, LAYOUTS[layout_id], epochs=3)
    for key in OUTPUT_LOGS:
        np.testing.assert_allclose(sam_history[key], keras_history[key], rtol=1e-5, err_msg=key)
    assert min(sam_history["sharpness"]) > 1e-3  # the perturbed passes did run


def test_per_output_losses_equal_keras_at_rho_0_while_training():
    keras_history, sam_history = _keras_and_sam_histories(0.0, 0.1, None, "auto", epochs=3)
    assert keras_history["loss"][-1] < keras_history["loss"][0]
    for key in OUTPUT_LOGS:
        np.testing.assert_allclose(sam_history[key], keras_history[key], rtol=1e-5, err_msg=key)


def test_per_output_losses_with_a_short_last_batch_are_the_means_over_examples():
    """35 examples in batches of 16, 16 and 3: the per-output losses of `fit` (lr 0) and `evaluate` are
    the means over all examples, computed here from the predictions. (Plain Keras 3 averages the three
    batches' values unweighted there: its step is traced with an unknown batch size.)"""
    case = model_zoo.build("two_inputs_two_outputs")
    model = SAMModel(model_zoo.without_dropout(case.model), rho=0.3, m=4)
    model.compile(optimizer=keras.optimizers.SGD(0.0), **case.compile_kwargs)
    predictions = case.model.predict(case.x, verbose=0)
    expected = {
        "cls_loss": keras.losses.SparseCategoricalCrossentropy(from_logits=True)(case.y["cls"], predictions["cls"]),
        "reg_loss": keras.losses.MeanSquaredError()(case.y["reg"], predictions["reg"]),
    }
    history = model.fit(case.x, case.y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0).history
    evaluated = model.evaluate(case.x, case.y, batch_size=BATCH, verbose=0, return_dict=True)
    for key, value in expected.items():
        np.testing.assert_allclose(history[key], [float(value)] * 2, rtol=1e-5, err_msg=key)
        assert evaluated[key] == pytest.approx(float(value), rel=1e-5), key
