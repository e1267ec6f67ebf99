"""Feature sparsity and Jacobian rank against hand-built activations and Jacobians with known answers."""

import glob

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_msam
from keras_msam import sparsity
from keras_msam.sparsity import rank_of, sparsity_of_activations

A = np.array([1.0, 0.0, 2.0, 0.0, 1.0, 3.0])  # 4 non-zeros
B = np.array([1.0, 1.0, 0.0, 2.0, 0.0, 1.0])  # 4 non-zeros, overlapping A on rows 0 and 5


def papers_feature_sparsity(phi, corr_threshold=0.99, normalize=True):
    """fc_nets.py::feature_sparsity (normalize) / deep_nets/utils_eval.py (not), written as the papers do it."""
    phi = np.array(phi, dtype=np.float64)
    if normalize:
        with np.errstate(invalid="ignore"):
            phi /= (phi**2).sum(1, keepdims=True) ** 0.5
        phi[np.isnan(phi)] = 0.0
    idx_keep = np.where((phi > 0.0).sum(0) > 0)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        corr_matrix = np.corrcoef(phi[:, idx_keep].T)
    corr_matrix -= np.eye(corr_matrix.shape[0])
    idx_to_delete, i, j = [], 0, 0
    while i != corr_matrix.shape[0]:
        if (np.abs(corr_matrix[i]) > corr_threshold).sum() > 0:
            corr_matrix = np.delete(corr_matrix, (i), axis=0)
            corr_matrix = np.delete(corr_matrix, (i), axis=1)
            idx_to_delete.append(j)
        else:
            i += 1
        j += 1
    idx_keep = np.delete(idx_keep, idx_to_delete)
    return (phi[:, idx_keep] != 0).sum() / (phi.shape[0] * phi.shape[1]), idx_keep


# A 12 x 3 matrix on which keep-last and keep-first disagree (row-normalised correlations: AB = -0.9928,
# BC = 0.9896, AC = -0.9964): the papers keep B and C (SS 0.611), a keep-first rule keeps A only (0.333).
TWELVE_BY_THREE = np.array([
    [.233, .229, .23], [.645, .652, .646], [.814, .81, .815], [.004, 0, 0], [.595, .596, .593], [.241, .244, .263],
    [.212, .209, .213], [.613, .605, .623], [.59, .599, .579], [.207, .216, .195], [.796, .792, .804], [.171, .153, .151],
])


def test_the_papers_example_keeps_the_last_columns_of_a_correlated_group():
    np.testing.assert_array_equal(sparsity.deduplicated_columns(TWELVE_BY_THREE, 0.99), [1, 2])
    assert sparsity_of_activations(TWELVE_BY_THREE, 0.99) == pytest.approx(0.6111, abs=1e-4)
    assert papers_feature_sparsity(TWELVE_BY_THREE, 0.99)[0] == pytest.approx(0.6111, abs=1e-4)


def _relu_features(seed, n=40, width=30, duplicates=8):
    """ReLU features with exact and near duplicates (scaled copies plus small noise), dead and constant units."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3))
    w = rng.normal(size=(3, width))
    b = rng.normal(size=width)
    copies = rng.integers(0, width, size=duplicates)
    w[:, -duplicates:] = w[:, copies] * rng.uniform(0.5, 2, size=duplicates) + 0.02 * rng.normal(size=(3, duplicates))
    b[-duplicates:] = b[copies] * (w[0, -duplicates:] / w[0, copies])
    phi = np.maximum(x @ w + b, 0.0)
    phi[:, 0] = 0.0  # dead
    phi[:, 1] = 1.5  # constant
    return phi[:, rng.permutation(width)]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("threshold, normalize", [(0.99, True), (0.999, True), (0.95, False), (0.9, False)])
def test_deduplication_is_the_papers_loop(seed, threshold, normalize):
    phi = _relu_features(seed)
    expected, keep = papers_feature_sparsity(phi, threshold, normalize)
    np.testing.assert_array_equal(sparsity.deduplicated_columns(phi, threshold, row_normalize=normalize), keep)
    assert sparsity_of_activations(phi, threshold, row_normalize=normalize) == pytest.approx(expected, rel=1e-12)


def test_duplicated_and_dead_columns_count_in_d_but_not_in_the_numerator():
    phi = np.stack([A, 3 * A, np.zeros(6), B], axis=1)  # n = 6, D = 4
    assert sparsity_of_activations(phi) == pytest.approx((4 + 4) / 24)
    assert sparsity_of_activations(phi, raw=True) == pytest.approx((4 + 4 + 4) / 24)
    np.testing.assert_array_equal(sparsity.deduplicated_columns(phi), [1, 3])  # A duplicates the later 3A


def test_rows_are_normalised_so_the_answer_is_invariant_to_row_scaling():
    phi = np.stack([A, 3 * A, B, A + B, np.arange(6.0)], axis=1)
    scaled = phi * np.array([1.0, 10.0, 0.1, 5.0, 2.0, 7.0])[:, None]
    for threshold in (0.9, 0.95, 0.99):
        kept = sparsity.deduplicated_columns(phi, threshold).tolist()
        assert sparsity.deduplicated_columns(scaled, threshold).tolist() == kept
        assert sparsity_of_activations(scaled, threshold) == pytest.approx(sparsity_of_activations(phi, threshold))


def _equal_row_norms(columns):
    """Appends a last column that gives every row the same norm, so row normalisation keeps correlations."""
    phi = np.stack(columns, axis=1)
    squares = (phi**2).sum(axis=1)
    return np.c_[phi, np.sqrt(2 * squares.max() - squares)]


def test_threshold_separates_nearly_correlated_columns():
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 2, size=200)
    other = base + 0.2 * rng.uniform(0, 1, size=200)
    phi = _equal_row_norms([base, other])
    assert 0.95 < abs(np.corrcoef(base, other)[0, 1]) < 0.99  # precondition of the test
    loose, strict = sparsity.deduplicated_columns(phi, 0.99), sparsity.deduplicated_columns(phi, 0.95)
    assert 0 in loose and 1 in loose
    assert 0 not in strict  # the first of the pair goes
    np.testing.assert_array_equal(strict, papers_feature_sparsity(phi, 0.95)[1])
    # Every entry is positive, so the sparsity is the fraction of columns kept.
    assert sparsity_of_activations(phi, 0.95) == pytest.approx(len(strict) / 3)
    assert sparsity_of_activations(phi, 0.99) == pytest.approx(len(loose) / 3)


def test_greedy_compares_with_every_remaining_column():
    # c0 -- c1 -- c2 a chain: c1 duplicates c0 and c2 duplicates c1, but c2 is far from c0: only c2 survives
    # (a keep-first rule would keep c0 and c2).
    rng = np.random.default_rng(1)
    x, u = rng.uniform(1, 2, size=(2, 400))
    phi = np.stack([x, x + 0.1 * u, x + 0.2 * u], axis=1)
    c = np.abs(np.corrcoef(phi.T))
    threshold = (c[0, 1] + c[0, 2]) / 2
    assert c[0, 1] > threshold and c[1, 2] > threshold and c[0, 2] < threshold  # precondition
    assert sparsity.deduplicated_columns(phi, threshold, row_normalize=False).tolist() == [2]
    np.testing.assert_array_equal(papers_feature_sparsity(phi, threshold, normalize=False)[1], [2])


def test_constant_columns_are_never_duplicates_and_all_dead_is_zero():
    # constant columns: NaN correlations (np.corrcoef), so all three are kept
    ramp = np.c_[np.ones(5), 2 * np.ones(5), np.arange(1.0, 6.0)]
    np.testing.assert_array_equal(sparsity.deduplicated_columns(ramp, row_normalize=False), [0, 1, 2])
    np.testing.assert_array_equal(papers_feature_sparsity(ramp, normalize=False)[1], [0, 1, 2])
    # rows normalised, [[1, 1], [2, 2], [3, 3]] is constant up to rounding, which correlates: one survives,
    # as in the papers' code
    phi = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])
    assert sparsity_of_activations(phi) == papers_feature_sparsity(phi)[0] == 0.5
    assert sparsity_of_activations(np.zeros((5, 3))) == 0.0
    assert sparsity_of_activations(np.zeros((5, 3)), raw=True) == 0.0


def test_rank_of_counts_singular_values_above_the_relative_tolerance():
    assert rank_of(np.diag([2.0, 1e-3, 1e-5])) == 2  # 1e-3 / 2 > 1e-4 > 1e-5 / 2
    assert rank_of(np.diag([2.0, 1e-3, 1e-5]), rel_tol=1e-2) == 1
    assert rank_of(np.zeros((4, 7))) == 0
    low_rank = np.random.default_rng(0).normal(size=(30, 3)) @ np.random.default_rng(1).normal(size=(3, 50))
    assert rank_of(low_rank) == 3


def _x_of_rank(n=12, d=6, r=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, r)) @ rng.normal(size=(r, d))).astype("float32")


def test_jacobian_of_a_linear_model_is_x_and_its_rank_is_rank_x():
    x = _x_of_rank()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1, use_bias=False)])
    np.testing.assert_allclose(sparsity.jacobian_matrix(model, x), x, rtol=1e-6)
    assert sparsity.jacobian_rank(model, x) == 3
    with_bias = keras.Sequential([keras.Input((6,)), keras.layers.Dense(1)])
    np.testing.assert_allclose(sparsity.jacobian_matrix(with_bias, x), np.c_[x, np.ones(12)], rtol=1e-6)
    assert sparsity.jacobian_rank(with_bias, (x, np.zeros(12))) == 4  # the ones column is outside span(X)


def _two_layer(width=4, d=3):
    inputs = keras.Input((d,))
    hidden = keras.layers.Dense(width, activation="relu", name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(1, use_bias=False, name="out")(hidden))


def test_jacobian_of_a_two_layer_net_matches_its_analytic_form_in_batches():
    model = _two_layer()
    x = np.random.default_rng(0).normal(size=(10, 3)).astype("float32")
    w, b = model.get_layer("hidden").get_weights()
    a = model.get_layer("out").get_weights()[0][:, 0]
    pre = x @ w + b
    active = (pre > 0).astype("float32")
    # d f / d W[i, j] = x_i a_j 1{pre_j > 0};  d f / d b_j = a_j 1{pre_j > 0};  d f / d a_j = relu(pre_j).
    expected = np.concatenate(
        [(x[:, :, None] * (active * a)[:, None, :]).reshape(10, -1), active * a, np.maximum(pre, 0)], axis=1
    )
    np.testing.assert_allclose(sparsity.jacobian_matrix(model, x, batch_size=3), expected, rtol=1e-5, atol=1e-6)


def test_feature_sparsity_reads_the_layer_of_a_model_and_of_a_sam_model():
    model = _two_layer(width=4, d=2)
    # Units: u0 = relu(x0), u1 = 2 u0 (duplicate), u2 dead, u3 = relu(x1).
    w = np.array([[1.0, 2.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]], "float32")
    b = np.array([0.0, 0.0, -1.0, 0.0], "float32")
    model.get_layer("hidden").set_weights([w, b])
    x = np.array([[1, 1], [-1, 2], [2, -1], [-1, -1], [3, 0.5]], "float32")
    # u0 non-zero on rows 0, 2, 4; u3 on rows 0, 1, 4. n * D = 20.
    assert sparsity.feature_sparsity(model, "hidden", x) == pytest.approx(6 / 20)
    assert sparsity.feature_sparsity(model, "hidden", x, raw=True) == pytest.approx(9 / 20)
    assert sparsity.feature_sparsity(model, 1, (x, np.zeros(5))) == pytest.approx(6 / 20)
    sam = keras_msam.SAMModel(model, rho=0.05)
    assert sparsity.feature_sparsity(sam, model.get_layer("hidden"), x) == pytest.approx(6 / 20)
    # max_units subsamples units, in the order of the papers' legacy draw; raw counts all the units.
    units = np.random.RandomState(3).choice(4, 2, replace=False)
    phi = np.maximum(x @ w + b, 0)[:, units]
    sub = sparsity.feature_sparsity(model, "hidden", x, max_units=2, seed=3)
    assert sub == pytest.approx(papers_feature_sparsity(phi)[0])
    assert sparsity.feature_sparsity(model, "hidden", x, raw=True, max_units=2) == pytest.approx(9 / 20)


def test_jacobian_needs_one_output_per_example():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one scalar output"):
        sparsity.jacobian_rank(model, np.zeros((4, 3), "float32"))


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(ValueError, match="hidden"):
        sparsity.feature_sparsity(_two_layer(), "nope", np.zeros((2, 3), "float32"))


def _conv_net():
    inputs = keras.Input((4, 4, 2))
    c1 = keras.layers.Conv2D(3, 3, padding="same", activation="relu", name="c1")(inputs)
    c2 = keras.layers.Conv2D(5, 3, padding="same", activation="relu", name="c2")(c1)
    pool = keras.layers.GlobalAveragePooling2D(name="pool")(c2)
    return keras.Model(inputs, keras.layers.Dense(1, name="out")(pool))


def test_layer_sparsities_is_the_papers_deep_net_measure():
    model = _conv_net()
    x = np.random.default_rng(0).normal(size=(50, 4, 4, 2)).astype("float32")
    measured = sparsity.layer_sparsities(model, ["c1", "c2", "pool"], x, threshold=0.95, max_units=30, seed=7,
                                         batch_size=16)
    phis = keras.Model(model.inputs, [model.get_layer(n).output for n in ("c1", "c2", "pool")]).predict(x, verbose=0)
    rng = np.random.RandomState(7)  # the papers draw from one stream, block after block (pool: 5 units, no draw)
    for name, phi in zip(("c1", "c2", "pool"), phis):
        phi = phi.reshape(50, -1).astype(np.float64)
        assert measured[name]["raw"] == pytest.approx(np.mean(phi > 0))  # all units, before subsampling
        if phi.shape[1] > 30:
            phi = phi[:, rng.choice(phi.shape[1], 30, replace=False)]
        expected, _ = papers_feature_sparsity(phi, 0.95, normalize=False)
        assert measured[name]["feature"] == pytest.approx(expected, rel=1e-6), name
    # the same from a tf.data pipeline of (x, y) batches
    dataset = tf.data.Dataset.from_tensor_slices((x, np.zeros(50))).batch(20)
    again = sparsity.layer_sparsities(model, ["c1", "c2", "pool"], dataset, threshold=0.95, max_units=30, seed=7)
    for name in measured:
        assert again[name] == pytest.approx(measured[name], rel=1e-6)


def test_sparsity_logger_writes_tensorboard_scalars_every_n_steps(tmp_path):
    model = _two_layer(width=8, d=3)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse", steps_per_execution=5)
    x = np.random.default_rng(0).normal(size=(20, 3)).astype("float32")
    y = x[:, :1] ** 2
    logger = sparsity.SparsityLogger(x, "hidden", every_n_steps=10, log_dir=tmp_path)
    model.fit(x, y, batch_size=1, epochs=2, verbose=0, callbacks=[logger])  # 40 steps
    assert [h["step"] for h in logger.history] == [0, 10, 20, 30, 40]
    last = logger.history[-1]
    assert last["feature"] == pytest.approx(sparsity.feature_sparsity(model, "hidden", x))
    assert last["jacobian_rank"] == sparsity.jacobian_rank(model, x)
    tags = set()
    for path in glob.glob(str(tmp_path / "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            tags.update(v.tag for v in event.summary.value)
    assert {"sparsity/feature", "sparsity/raw", "sparsity/jacobian_rank"} <= tags


def test_sparsity_logger_of_several_layers_with_extra_scalars():
    model = _conv_net()
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="mse")
    x = np.random.default_rng(1).normal(size=(24, 4, 4, 2)).astype("float32")
    y = x.mean(axis=(1, 2, 3))[:, None]
    logger = sparsity.SparsityLogger(x, ["c1", "pool"], every_n_steps=6, threshold=0.95, max_units=20,
                                     row_normalize=False, rank=False, seed=3,
                                     extra=lambda m: {"train_loss": float(m.evaluate(x, y, verbose=0))})
    model.fit(x, y, batch_size=4, epochs=2, verbose=0, callbacks=[logger])  # 12 steps
    assert [h["step"] for h in logger.history] == [0, 6, 12]
    last = logger.history[-1]
    expected = sparsity.layer_sparsities(model, ["c1", "pool"], x, threshold=0.95, max_units=20, seed=3 + 2)
    assert last["feature/c1"] == pytest.approx(expected["c1"]["feature"])
    assert last["raw/pool"] == pytest.approx(expected["pool"]["raw"])
    assert last["train_loss"] == pytest.approx(float(model.evaluate(x, y, verbose=0)))
