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


def test_duplicated_and_dead_columns_count_in_d_but_not_in_the_numerator():
    phi = np.stack([A, 3 * A, np.zeros(6), B], axis=1)  # n = 6, D = 4
    assert sparsity_of_activations(phi) == pytest.approx((4 + 4) / 24)
    assert sparsity_of_activations(phi, raw=True) == pytest.approx((4 + 4 + 4) / 24)
    np.testing.assert_array_equal(sparsity.deduplicated_columns(phi), [0, 3])


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
    assert 0 in strict and 1 not in strict
    # Every entry is positive, so the sparsity is the fraction of columns kept.
    assert sparsity_of_activations(phi, 0.95) == pytest.approx(len(strict) / 3)
    assert sparsity_of_activations(phi, 0.99) == pytest.approx(len(loose) / 3)


def test_greedy_compares_only_with_kept_columns():
    # c0 -- c1 -- c2 a chain: c1 duplicates c0 and c2 duplicates c1, but c2 is far from c0.
    rng = np.random.default_rng(1)
    x, u = rng.uniform(1, 2, size=(2, 400))
    phi = _equal_row_norms([x, x + 0.1 * u, x + 0.2 * u])
    c = np.abs(np.corrcoef(phi[:, :3].T))
    threshold = (c[0, 1] + c[0, 2]) / 2
    assert c[0, 1] > threshold and c[1, 2] > threshold and c[0, 2] < threshold  # precondition
    assert sparsity.deduplicated_columns(phi, threshold).tolist()[:2] == [0, 2]


def test_constant_columns_are_one_feature_and_all_dead_is_zero():
    phi = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]])  # rows normalised -> both columns constant
    assert sparsity_of_activations(phi) == pytest.approx(3 / 6)
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
    # max_units subsamples units: keeping 2 of the 4 units measures over those 2 only.
    units = np.sort(np.random.default_rng(3).choice(4, size=2, replace=False))
    phi = np.maximum(x @ w + b, 0)[:, units]
    sub = sparsity.feature_sparsity(model, "hidden", x, max_units=2, seed=3)
    assert sub == pytest.approx(sparsity_of_activations(phi))


def test_jacobian_needs_one_output_per_example():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="one scalar output"):
        sparsity.jacobian_rank(model, np.zeros((4, 3), "float32"))


def test_unknown_layer_lists_the_valid_ones():
    with pytest.raises(ValueError, match="hidden"):
        sparsity.feature_sparsity(_two_layer(), "nope", np.zeros((2, 3), "float32"))


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
