"""An independent NumPy m-SAM step on a tanh MLP with MSE loss, for checking SAMModel's numerics.

params = [W1, b1, W2, b2]; f(x) = tanh(x W1 + b1) W2 + b2; shard loss
L_S(w) = sum_{i in S} s_i * mean_o (f_io - y_io)^2 / |S| + l2 * (||W1||^2 + ||W2||^2)
(Keras' MSE with sample weights and `sum_over_batch_size` reduction, plus L2 kernel regularizers).
"""

import numpy as np


def loss_and_grad(params, x, y, sw, l2):
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    f = h @ w2 + b2
    n, out = f.shape
    r = f - y
    loss = np.sum(sw * np.mean(r**2, axis=1)) / n + l2 * (np.sum(w1**2) + np.sum(w2**2))
    df = 2.0 * sw[:, None] * r / (n * out)
    dw2 = h.T @ df + 2 * l2 * w2
    db2 = df.sum(0)
    dz = (df @ w2.T) * (1 - h**2)
    dw1 = x.T @ dz + 2 * l2 * w1
    db1 = dz.sum(0)
    return loss, [dw1, db1, dw2, db2]


def _norm(ts):
    return np.sqrt(sum(np.sum(t**2) for t in ts))


def msam_gradient(params, x, y, sw=None, *, m=None, rho=0.05, normalize=True, ascent_steps=1,
                  step_mult=1.0, adaptive=False, eta=0.0, l2=0.0, perturb_mask=None):
    """sum_j |S_j|/b * grad L_{S_j}(w + eps_j), shards contiguous, last one smaller if needed."""
    b = len(x)
    sw = np.ones(b) if sw is None else sw
    m = b if m is None else m
    mask = perturb_mask or [1.0] * len(params)
    total = [np.zeros_like(p) for p in params]
    for start in range(0, b, m):
        s = slice(start, min(start + m, b))
        xs, ys, ss = x[s], y[s], sw[s]
        scales = [np.abs(p) + eta for p in params] if adaptive else [np.ones_like(p) for p in params]
        delta = [np.zeros_like(p) for p in params]
        for _ in range(ascent_steps):
            _, g = loss_and_grad([p + d for p, d in zip(params, delta)], xs, ys, ss, l2)
            g = [gi * k for gi, k in zip(g, mask)]
            scaled = [t * gi for t, gi in zip(scales, g)]
            direction = [t * sg for t, sg in zip(scales, scaled)]
            size = rho * step_mult / (_norm(scaled) + 1e-12) if normalize else rho * step_mult
            delta = [d + size * di for d, di in zip(delta, direction)]
            if normalize:
                n = _norm([d / t for d, t in zip(delta, scales)])
                delta = [d * min(1.0, rho / (n + 1e-12)) for d in delta]
        _, g_sam = loss_and_grad([p + d for p, d in zip(params, delta)], xs, ys, ss, l2)
        total = [t + len(xs) / b * g for t, g in zip(total, g_sam)]
    return total
