"""The implicit bias of diagonal linear networks: hyperbolic entropy, its min-norm interpolator, effective alpha.

For f(x) = <x, beta> with beta = u * v trained by gradient flow on the square loss, the iterates stay on
    beta = 2 a^2 sinh(X^T mu)            for some mu in R^n,
and a global minimum of that form is the interpolator of minimal hyperbolic entropy (Woodworth et al., 2020)
    phi_a(beta) = a * sum_i q(beta_i / a^2),   q(z) = 2 - sqrt(4 + z^2) + z * arcsinh(z / 2),
because grad phi_a(beta) = arcsinh(beta / (2 a^2)) / a lies in the row space of X exactly for those beta.
Small a makes phi_a ~ (2 log(1/a) / a) * ||beta||_1 (sparse interpolators); large a makes it
||beta||_2^2 / (4 a^3) (min-L2 interpolators).

Scale convention: the net initialised at u0 = alpha_init, v0 = 0 (the papers' code) has
u^2 - v^2 = alpha_init^2 conserved and follows beta = (alpha_init^2 / 2) sinh(X^T mu): it is the
min-phi_a interpolator with a = alpha_init / 2 (the w+ = w- = a initialisation of beta = w+^2 - w-^2).
`alpha_of_init` converts.

SAM (Andriushchenko & Flammarion, 2022, Theorem 1) keeps the sinh form but shrinks the scale per
coordinate, a -> a * exp(-rho * Delta), Delta >= 0; in both the n-SAM and 1-SAM flows the product
(u + v)(u - v) = u^2 - v^2 carries exactly that factor, so `alpha_per_coordinate(u, v)` =
sqrt(u^2 - v^2) / 2 reads the effective scale off the trained weights, and the weights sit at the
interpolator of minimal sum_i a_i^2 q(beta_i / a_i^2) for that vector a (`min_entropy_interpolator`
accepts a vector). `effective_alpha` instead fits one scalar a: the interpolator closest to beta.
`first_order_deltas` gives Delta to first order in rho, along the gradient-descent path.

NumPy only: the interpolator is found by damped Newton on the (smooth, strictly convex) dual
    min_mu  F(mu) = 2 a^2 sum_i (cosh((X^T mu)_i) - 1) - <y, mu>,   grad F = X beta(mu) - y.
"""

import numpy as np

DEFAULT_ALPHAS = np.logspace(-6, 1, 141)


def q(z):
    """q(z) = 2 - sqrt(4 + z^2) + z * arcsinh(z / 2): convex, even, q(0) = 0, q'(z) = arcsinh(z / 2)."""
    z = np.asarray(z, dtype=np.float64)
    return 2.0 - np.sqrt(4.0 + z * z) + z * np.arcsinh(z / 2.0)


def hyperbolic_entropy(beta, alpha):
    """phi_alpha(beta) = alpha * sum_i q(beta_i / alpha^2)."""
    alpha = _check_alpha(alpha)
    beta = np.asarray(beta, dtype=np.float64)
    return float(alpha * np.sum(q(beta / alpha**2)))


def alpha_of_init(alpha_init):
    """The a of phi_a that gradient flow from u0 = alpha_init, v0 = 0 minimises: alpha_init / 2."""
    return _check_alpha(alpha_init, name="alpha_init") / 2.0


def alpha_per_coordinate(u, v):
    """The effective scale a_i = sqrt(|u_i^2 - v_i^2|) / 2 of a trained u * v net (a = alpha_init / 2 at init)."""
    u, v = np.asarray(u, dtype=np.float64), np.asarray(v, dtype=np.float64)
    if u.shape != v.shape:
        raise ValueError(f"u and v must have the same shape; got u {u.shape} and v {v.shape}.")
    return np.sqrt(np.abs(u * u - v * v)) / 2.0


def min_entropy_interpolator(X, y, alpha, tol=1e-10, max_iter=500, mu0=None, return_dual=False):
    """argmin phi_alpha(beta) s.t. X beta = y, by damped Newton on the dual (needs X of full row rank).

    With a vector alpha (one scale per coordinate) the objective is sum_i alpha_i^2 q(beta_i / alpha_i^2),
    the potential of the dynamics beta_i = 2 alpha_i^2 sinh((X^T mu)_i); for a scalar alpha it has the
    same minimiser as phi_alpha.

    Args:
        X: [n, d] design, n <= d, rows linearly independent.
        y: [n] targets.
        alpha: the scale a > 0 of phi_a, or a [d] vector of positive scales.
        tol: stop when ||X beta - y|| <= tol * max(1, ||y||).
        mu0: warm start for the dual variable (e.g. the solution at a nearby alpha).
        return_dual: also return mu (beta = 2 a^2 sinh(X^T mu)).

    Raises:
        ValueError: shapes do not match, alpha <= 0, or Newton did not reach `tol` in `max_iter` steps.
    """
    X, y = _check_xy(X, y)
    alpha = np.asarray(alpha, dtype=np.float64)
    if alpha.ndim == 0:
        alpha = _check_alpha(alpha)
    elif alpha.shape != (X.shape[1],) or not np.all(np.isfinite(alpha)) or np.any(alpha <= 0):
        raise ValueError(f"alpha must be a float > 0 or a vector of {X.shape[1]} positive floats; got {alpha!r}.")
    scale = 2.0 * alpha**2
    mu = np.zeros(X.shape[0]) if mu0 is None else np.array(mu0, dtype=np.float64)
    target = tol * max(1.0, float(np.linalg.norm(y)))

    def dual(m):
        with np.errstate(over="ignore"):
            value = np.sum(scale * 2.0 * np.sinh(X.T @ m / 2.0) ** 2) - y @ m  # cosh - 1, without cancellation
        return value if np.isfinite(value) else np.inf

    value = dual(mu)
    for _ in range(max_iter):
        z = X.T @ mu
        beta = scale * np.sinh(z)
        grad = X @ beta - y
        if np.linalg.norm(grad) <= target:
            return (beta, mu) if return_dual else beta
        hessian = (X * (scale * np.cosh(z))) @ X.T
        step = np.linalg.solve(hessian, grad)
        decrease = grad @ step
        if decrease <= 1e-13 * max(1.0, abs(value)):  # F cannot resolve the step: take the Newton step
            mu = mu - step
            value = dual(mu)
            continue
        t = 1.0
        while t > 1e-12:  # Armijo backtracking: F is convex but cosh makes full steps overshoot
            candidate = dual(mu - t * step)
            if candidate <= value - 0.25 * t * decrease:
                break
            t *= 0.5
        else:
            break
        mu, value = mu - t * step, candidate
    raise ValueError(
        f"min_entropy_interpolator did not converge for alpha={np.min(alpha):g} (smallest) in "
        f"max_iter={max_iter} Newton steps; "
        "raise max_iter, warm-start with mu0 from a larger alpha, or check that X has full row rank."
    )


def interpolator_path(X, y, alphas=DEFAULT_ALPHAS, tol=1e-10):
    """{alpha: min-phi_alpha interpolator} over `alphas`, solved from the largest alpha down (warm starts)."""
    X, y = _check_xy(X, y)
    alphas = np.sort(np.asarray([_check_alpha(a, name="alphas") for a in np.ravel(alphas)]))[::-1]
    path, mu = {}, None
    for alpha in alphas:
        beta, mu = min_entropy_interpolator(X, y, alpha, tol=tol, mu0=mu, return_dual=True)
        path[float(alpha)] = beta
    return path


def effective_alpha(beta, X, y, alphas=DEFAULT_ALPHAS, tol=1e-10):
    """The alpha (from the grid `alphas`) whose min-phi_alpha interpolator is closest (L2) to `beta`.

    Returns (alpha, distance). Only meaningful for a beta that (nearly) interpolates X beta = y.
    """
    beta = np.asarray(beta, dtype=np.float64)
    X, y = _check_xy(X, y)
    if beta.shape != (X.shape[1],):
        raise ValueError(f"beta must have shape ({X.shape[1]},) to match X of shape {X.shape}; got {beta.shape}.")
    path = interpolator_path(X, y, alphas, tol)
    best = min(path, key=lambda a: np.linalg.norm(path[a] - beta))
    return best, float(np.linalg.norm(path[best] - beta))


def first_order_deltas(X, y, alpha_init, gamma, steps):
    """Theorem 1's Delta to first order in rho, in the rho convention of the papers' code, along GD's path.

    With p = u + v, m = u - v (so u_i^2 - v_i^2 = p_i m_i and a_i = sqrt(p_i m_i) / 2), the SAM flows give
        n-SAM (eps = rho * grad L):           d log a_i / dt = -rho * g_i(w + eps) * g_i(w),  g = X^T r / n,
        1-SAM (eps_k = rho * grad r_k^2):     d log a_i / dt = -(2 rho / n) sum_k G_ki(w + eps_k) * r_k x_ki,
    where G_k = (x_k . beta - y_k) x_k and r = X beta - y. To first order in rho the perturbed gradients are
    those at w and the path is ERM's, so log a_SAM,i - log a_ERM,i = -rho * Delta_i with
        Delta_nSAM,i = int g_i^2 dt,   Delta_1SAM,i = (2 / n) int sum_k r_k^2 x_ki^2 dt,
    the integrals along gradient descent from u0 = alpha_init, v0 = 0 with step gamma (time gamma per step;
    ||Delta_1SAM||_1 ~ 2n ||Delta_nSAM||_1 when the x_ki^2 average 1: the paper's "d int L" vs "d/n int L").

    Returns {"n-sam": Delta_nSAM [d], "1-sam": Delta_1SAM [d], "integral_of_loss": int L dt}, NumPy float64.
    """
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be [n, d] and y [n] with the same n; got X {X.shape} and y {y.shape}.")
    alpha_init = _check_alpha(alpha_init, name="alpha_init")
    if not (np.isfinite(gamma) and gamma > 0):
        raise ValueError(f"gamma must be a finite float > 0 (the step size); got gamma={gamma!r}.")
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive int; got steps={steps!r}.")
    n, d = X.shape
    u, v = np.full(d, alpha_init), np.zeros(d)
    squares = X * X
    delta_n, delta_1, integral = np.zeros(d), np.zeros(d), 0.0
    for _ in range(steps):
        r = X @ (u * v) - y
        g = X.T @ r / n
        delta_n += g * g
        delta_1 += (r * r) @ squares
        integral += r @ r
        u, v = u - gamma * g * v, v - gamma * g * u
    return {"n-sam": gamma * delta_n, "1-sam": gamma * 2.0 / n * delta_1, "integral_of_loss": gamma * integral / (2 * n)}


def _check_alpha(alpha, name="alpha"):
    alpha = float(alpha)
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{name} must be a finite float > 0; got {name}={alpha!r}.")
    return alpha


def _check_xy(X, y):
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.shape[0]:
        raise ValueError(f"X must be [n, d] and y [n] with the same n; got X {X.shape} and y {y.shape}.")
    if X.shape[0] > X.shape[1]:
        raise ValueError(
            f"X must have n <= d (an underdetermined system, so that interpolators form a family to choose "
            f"from); got X of shape {X.shape}."
        )
    return X, y
