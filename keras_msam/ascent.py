"""The worst-case weight perturbation of SAM, as small functions on lists of tensors.

Every function takes and returns plain lists aligned with the model's trainable variables, so the
same code serves one shard or a vectorized stack of shards (inside `tf.vectorized_map`).

Conventions (those of the papers' code, see `shared/reference/experiments.md`):
- normalized ascent: eps = rho * g / ||g||;  unnormalized: eps = rho * g;
- adaptive (ASAM): the step is taken in the space scaled by T = |w| + eta,
  eps = rho * T^2 g / ||T g|| (normalized) or rho * T^2 g (unnormalized);
- multi-step: delta <- project(delta + rho * step_mult * direction(g(w + delta))), projected back onto
  the rho-ball (the T^-1-scaled ball for ASAM); unnormalized steps are not projected.
"""

import tensorflow as tf

_TINY = 1e-12


def global_norm(tensors):
    """sqrt(sum of squares) over a list of tensors, in float32."""
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, tf.float32))) for t in tensors]))


def adaptive_scales(weights, adaptive, eta):
    """T = |w| + eta for ASAM, or None (plain SAM)."""
    if not adaptive:
        return None
    return [tf.abs(tf.cast(w, tf.float32)) + eta for w in weights]


def ascent_step(grads, scales, step_size, normalize, norm=None):
    """One ascent step of length `step_size` along the gradient (in the T-scaled geometry).

    `norm`: ||T g|| if the caller has it already (one pass less over the gradients)."""
    if scales is None:
        scaled, direction = grads, grads
    else:
        scaled = [s * g for s, g in zip(scales, grads)]
        direction = [s * sg for s, sg in zip(scales, scaled)]
    if not normalize:
        return [step_size * d for d in direction]
    inv_norm = step_size / ((global_norm(scaled) if norm is None else norm) + _TINY)
    return [inv_norm * d for d in direction]


def project_to_ball(delta, scales, rho):
    """Rescales delta onto the rho-ball when it lies outside (||T^-1 delta|| <= rho for ASAM)."""
    measured = delta if scales is None else [d / s for d, s in zip(delta, scales)]
    factor = tf.minimum(1.0, rho / (global_norm(measured) + _TINY))
    return [factor * d for d in delta]
