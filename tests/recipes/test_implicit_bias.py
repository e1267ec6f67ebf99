"""recipes.implicit_bias against closed forms: q, the L1 / L2 limits of phi_alpha, the interpolators."""

import numpy as np
import pytest

from recipes import implicit_bias as ib


@pytest.fixture(scope="module")
def sparse_problem():
    """The papers' diagonal-net data (n = 20, d = 30, 3-sparse unit-norm teacher, NumPy seed 0)."""
    rng = np.random.RandomState(0)
    n, d, r = 20, 30, 3
    X = rng.multivariate_normal(np.zeros(d), np.eye(d), n)
    rng.multivariate_normal(np.zeros(d), np.eye(d), 1000)  # the test inputs, drawn to keep the stream aligned
    beta_star = rng.randn(d)
    beta_star[r:] = 0
    beta_star = np.abs(beta_star) / np.linalg.norm(beta_star)
    return X, X @ beta_star, beta_star


def test_q_closed_form_and_derivative():
    z = np.linspace(-50, 50, 2001)
    assert ib.q(0.0) == 0.0
    np.testing.assert_allclose(ib.q(z), ib.q(-z), rtol=0, atol=1e-12)  # even
    assert np.all(ib.q(z[z != 0]) > 0)
    h = 1e-5
    numeric = (ib.q(z + h) - ib.q(z - h)) / (2 * h)
    np.testing.assert_allclose(numeric, np.arcsinh(z / 2), rtol=1e-6, atol=1e-6)  # q'(z) = arcsinh(z / 2)
    np.testing.assert_allclose(ib.q(1e-3), 1e-6 / 4, rtol=1e-5)  # q(z) = z^2 / 4 + O(z^4)


def test_phi_small_alpha_is_scaled_l1_norm():
    beta = np.array([0.7, -0.2, 0.0, 0.05, 0.0, -1.3])
    l1 = np.abs(beta).sum()
    for alpha in (1e-3, 1e-4):
        z = np.abs(beta[beta != 0]) / alpha**2  # q(z) = z log z - z + 2 + O(1/z) for large z
        asymptote = alpha * np.sum(z * np.log(z) - z + 2)
        np.testing.assert_allclose(ib.hyperbolic_entropy(beta, alpha), asymptote, rtol=1e-7)
    # leading order: phi_alpha ~ (2 log(1 / alpha) / alpha) * ||beta||_1, the gap closing like 1 / log(1 / alpha)
    gaps = [abs(ib.hyperbolic_entropy(beta, a) * a / (2 * np.log(1 / a)) / l1 - 1) for a in (1e-2, 1e-4, 1e-8)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.1


def test_phi_large_alpha_is_scaled_squared_l2_norm():
    beta = np.array([0.7, -0.2, 0.0, 0.05, 1.3])
    alpha = 10.0
    np.testing.assert_allclose(ib.hyperbolic_entropy(beta, alpha), beta @ beta / (4 * alpha**3), rtol=1e-5)


@pytest.mark.parametrize("alpha", [1e-4, 0.05, 1.0, 10.0])
def test_interpolator_interpolates_and_satisfies_kkt(sparse_problem, alpha):
    X, y, _ = sparse_problem
    beta = ib.min_entropy_interpolator(X, y, alpha)
    np.testing.assert_allclose(X @ beta, y, atol=1e-8)
    # optimality: grad phi_alpha(beta) = arcsinh(beta / (2 alpha^2)) / alpha lies in the row space of X
    grad = np.arcsinh(beta / (2 * alpha**2)) / alpha
    coef, *_ = np.linalg.lstsq(X.T, grad, rcond=None)
    assert np.linalg.norm(X.T @ coef - grad) <= 1e-6 * max(1.0, np.linalg.norm(grad))
    # and it beats other interpolators on phi_alpha: the min-L2 one and a random one
    null = np.eye(X.shape[1]) - np.linalg.pinv(X) @ X
    others = [np.linalg.pinv(X) @ y, beta + null @ np.random.default_rng(0).normal(size=X.shape[1]) * 0.01]
    for other in others:
        assert ib.hyperbolic_entropy(beta, alpha) <= ib.hyperbolic_entropy(other, alpha) + 1e-9


def test_small_alpha_interpolator_is_the_sparse_teacher_and_large_alpha_is_min_l2(sparse_problem):
    X, y, beta_star = sparse_problem
    sparse = ib.min_entropy_interpolator(X, y, 1e-6)
    np.testing.assert_allclose(sparse, beta_star, atol=1e-4)  # n = 20 Gaussian rows recover the 3-sparse teacher
    dense = ib.min_entropy_interpolator(X, y, 10.0)
    min_l2 = np.linalg.pinv(X) @ y
    np.testing.assert_allclose(dense, min_l2, atol=1e-4)
    assert np.abs(sparse).sum() < np.abs(dense).sum()


def test_effective_alpha_recovers_the_scale_of_an_interpolator(sparse_problem):
    X, y, _ = sparse_problem
    grid = np.logspace(-4, 0, 81)
    for alpha in (grid[20], grid[50]):
        beta = ib.min_entropy_interpolator(X, y, alpha)
        found, distance = ib.effective_alpha(beta, X, y, grid)
        assert found == pytest.approx(alpha) and distance < 1e-6


def test_vector_alpha_generalises_the_scalar_one(sparse_problem):
    X, y, _ = sparse_problem
    d = X.shape[1]
    np.testing.assert_allclose(
        ib.min_entropy_interpolator(X, y, np.full(d, 0.05)), ib.min_entropy_interpolator(X, y, 0.05), atol=1e-9
    )
    # a much smaller scale on one coordinate penalises it more (|beta_i| log(1 / alpha_i) in the L1 regime)
    alphas = np.full(d, 0.05)
    alphas[0] = 1e-4
    assert abs(ib.min_entropy_interpolator(X, y, alphas)[0]) < abs(ib.min_entropy_interpolator(X, y, 0.05)[0])


def test_alpha_per_coordinate_at_init_and_under_gradient_flow(sparse_problem):
    X, y, _ = sparse_problem
    d = X.shape[1]
    u, v = np.full(d, 0.1), np.zeros(d)
    np.testing.assert_allclose(ib.alpha_per_coordinate(u, v), ib.alpha_of_init(0.1) * np.ones(d))
    # small-step GD keeps u^2 - v^2 (nearly) fixed and ends at the min-phi_{alpha/2} interpolator
    gamma = 0.5 / d
    for _ in range(16_000):
        g = X.T @ (X @ (u * v) - y) / len(y)
        u, v = u - gamma * g * v, v - gamma * g * u
    np.testing.assert_allclose(ib.alpha_per_coordinate(u, v), 0.05, rtol=1e-2)  # each step: * (1 - gamma^2 g^2)
    target = ib.min_entropy_interpolator(X, y, 0.05)
    assert np.linalg.norm(u * v - target) < 0.02 * np.linalg.norm(target)


def test_bad_inputs_name_the_parameter(sparse_problem):
    X, y, _ = sparse_problem
    with pytest.raises(ValueError, match="alpha must be a finite float > 0"):
        ib.hyperbolic_entropy(np.ones(3), 0.0)
    with pytest.raises(ValueError, match="alpha must be a float > 0 or a vector of 30"):
        ib.min_entropy_interpolator(X, y, np.ones(5))
    with pytest.raises(ValueError, match="n <= d"):
        ib.min_entropy_interpolator(X.T, np.ones(30), 0.1)
    with pytest.raises(ValueError, match=r"beta must have shape \(30,\)"):
        ib.effective_alpha(np.ones(4), X, y)
    with pytest.raises(ValueError, match="u and v must have the same shape"):
        ib.alpha_per_coordinate(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="gamma must be a finite float > 0"):
        ib.first_order_deltas(X, y, 0.1, 0.0, 10)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        ib.first_order_deltas(X, y, 0.1, 0.01, 0)
