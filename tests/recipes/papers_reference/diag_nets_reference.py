"""Reference numbers of tests/recipes/test_diag_nets.py that the papers' notebook does not print.

A pure-NumPy transcription of the formulas of tml-epfl/understanding-sam, diagonal_linear_nets/
(diag_nets.py: `loss`, `GD`, `n_SAM_GD`, `one_SAM_GD`; diag_nets_sam.ipynb: the data of cell 0, the
runs of cells 4 and 5, the interpolation of cell 7), float64 like the papers' code. It imports nothing
from this repository, so it checks our recipes independently. Run it from anywhere:

    python tests/recipes/papers_reference/diag_nets_reference.py

and compare its output with the constants marked "rerun" in test_diag_nets.py (it takes about a second).
Every run here is full-batch GD or GD-based SAM from the notebook's initialisation, with no random draw
after the data, so the numbers depend on nothing but floating-point rounding. The lines marked
"printed" are runs whose results the notebook does print: they check this transcription against it.
"""

import numpy as np

N, N_TEST, D, R = 20, 1000, 30, 3  # cell 0
STEPS = 10**4 + 1  # cell 0: num_iter = int(10**power) + 1 with power = 4


def make_data(seed=0):
    """Cell 0, draw by draw from np.random.seed(0): X, X_test ~ N(0, I), beta* = |N(0, 1)| on 3 coordinates
    normalised to unit norm, y = X beta*."""
    rng = np.random.RandomState(seed)
    x = rng.multivariate_normal(np.zeros(D), np.eye(D), N)
    x_test = rng.multivariate_normal(np.zeros(D), np.eye(D), N_TEST)
    beta = rng.randn(D)
    beta[R:] = 0.0
    beta = np.abs(beta) / np.linalg.norm(beta)
    return x, x @ beta, x_test, x_test @ beta, beta


def loss(x, y, u, v):
    """diag_nets.py::loss: ||X (u * v) - y||^2 / (2 n)."""
    return np.sum((x @ (u * v) - y) ** 2) / (2 * len(y))


def gd(x, y, gamma, u, v, steps):
    """diag_nets.py::GD without weight decay: gradient of `loss` in u and v, X^T r * v / n and X^T r * u / n."""
    n = len(y)
    for _ in range(steps):
        xr = x.T @ (x @ (u * v) - y) / n
        u, v = u - gamma * xr * v, v - gamma * xr * u
    return u, v


def n_sam(x, y, gamma, u, v, steps, rho):
    """diag_nets.py::n_SAM_GD: ascent by rho times the full-batch gradient (unnormalised), descent with the
    gradient there."""
    n = len(y)
    for _ in range(steps):
        xr = x.T @ (x @ (u * v) - y) / n
        us, vs = u + rho * xr * v, v + rho * xr * u
        xr = x.T @ (x @ (us * vs) - y) / n
        u, v = u - gamma * xr * vs, v - gamma * xr * us
    return u, v


def one_sam(x, y, gamma, u, v, steps, rho):
    """diag_nets.py::one_SAM_GD: example k ascends by rho * grad (r_k^2) = 2 rho r_k x_k (v, u), r_k taken
    at (u, v); the descent is the mean over k of example k's gradient at its own ascended point."""
    for _ in range(steps):
        r = x @ (u * v) - y
        us = u + 2 * rho * r[:, None] * x * v  # one row per example
        vs = v + 2 * rho * r[:, None] * x * u
        rs = np.sum(x * us * vs, axis=1) - y
        u = u - gamma * np.mean(rs[:, None] * vs * x, axis=0)
        v = v - gamma * np.mean(rs[:, None] * us * x, axis=0)
    return u, v


def main():
    x, y, x_test, y_test, beta = make_data()
    u0, v0 = np.full(D, 0.1), np.zeros(D)
    print("make_data: beta*[:3] =", ", ".join(f"{b:.5f}" for b in beta[:3]))

    # test_the_notebooks_n_sam_column_ran_at_the_stale_step_size: cell 4's n-SAM at its intended 15/d
    u, v = n_sam(x, y, 10 / D, u0, v0, STEPS, rho=0.001)
    print(f"n-SAM gamma=10/d rho=0.001: test loss {loss(x_test, y_test, u, v):.17g}"
          " (printed: cell 4, 0.015756677115280553)")
    u, v = n_sam(x, y, 15 / D, u0, v0, STEPS, rho=0.001)
    print(f"n-SAM gamma=15/d rho=0.001: test loss {loss(x_test, y_test, u, v):.6g}")

    # test_interpolation_reproduces_the_notebooks_cell_7: cell 5's end points, cell 7's segment
    gamma = 1 / D
    u_erm, v_erm = gd(x, y, gamma, u0, v0, STEPS)
    u_es, v_es = one_sam(x, y, gamma, u_erm, v_erm, STEPS, rho=10.0)
    print(f"ERM gamma=1/d: test loss {loss(x_test, y_test, u_erm, v_erm):.17g}"
          " (printed: cell 5, 0.014865600195083558)")
    print(f"ERM -> 1-SAM rho=10: test loss {loss(x_test, y_test, u_es, v_es):.17g}"
          " (printed: cell 5, 0.00014269229669575567)")
    a = np.linspace(-1, 2, 100)
    train, test = (np.array([loss(xs, ys, (1 - t) * u_es + t * u_erm, (1 - t) * v_es + t * v_erm) for t in a])
                   for xs, ys in ((x, y), (x_test, y_test)))
    best = int(np.argmin(test))
    print(f"interpolation: test loss {test[a == 0][0]:.5g} at a = 0 (ERM -> 1-SAM),"
          f" {test[a == 1][0]:.6g} at a = 1 (ERM)")
    print(f"interpolation: max train loss on [0, 1] {train[(a >= 0) & (a <= 1)].max():.4g}")
    print(f"interpolation: lowest test loss {test[best]:.4g} at a = {a[best]:.4f}")
    print(f"interpolation: train loss {train[0]:.5g} at a = -1, {train[-1]:.5g} at a = 2")


if __name__ == "__main__":
    main()
