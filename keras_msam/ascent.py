"""The worst-case weight perturbation of SAM: `Ascent` (its settings) and `perturbation` (the ascent).

Every function takes and returns plain lists aligned with the model's trainable variables, so the
same code serves one shard, a vectorized stack of shards (inside `tf.vectorized_map`) and the
m-sharpness evaluation (`keras_msam.sharpness`).

One ascent step of length s (s = rho * step_mult) from delta along the gradient g at w + delta:
- normalized:   delta + s * g / ||g||
- unnormalized: delta + s * g
- adaptive (ASAM): the step is taken in the space scaled by T = |w| + eta,
  s * T^2 g / ||T g|| (normalized) or s * T^2 g (unnormalized);
and, when `project`, delta is then scaled back onto the rho-ball (the T^-1-scaled ball for ASAM)
if it lies outside. `project=None` (default) projects the normalized ascent when a step can leave the
ball (several steps, or step_mult > 1) and never the unnormalized one (the diagonal-net code of the
papers); `project=True` with the unnormalized ascent is the deep-net code of the papers
(`deep_nets/sam.py`: delta + rho * g, then projected onto the rho-ball).

Arithmetic is in the dtype of the gradients (float32, or float64 for float64 models).
"""

import dataclasses

import tensorflow as tf

_TINY = 1e-12


@dataclasses.dataclass(frozen=True)
class Ascent:
    """How eps is computed from the gradients (see the module docstring)."""

    normalize: bool = True
    steps: int = 1
    step_mult: float = 1.0
    adaptive: bool = False
    eta: float = 0.0
    project: bool = None

    def projects(self):
        """Whether delta is projected onto the rho-ball after every step."""
        if self.project is not None:
            return bool(self.project)
        return self.normalize and (self.steps > 1 or self.step_mult > 1)


def global_norm(tensors):
    """sqrt(sum of squares) over a list of tensors, in the dtype of the first (at least float32)."""
    dtype = tf.float64 if tensors and tensors[0].dtype == tf.float64 else tf.float32
    return tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(tf.cast(t, dtype))) for t in tensors]))


def adaptive_scales(weights, ascent, dtype):
    """T = |w| + eta for ASAM, or None (plain SAM)."""
    if not ascent.adaptive:
        return None
    return [tf.abs(tf.cast(w, dtype)) + ascent.eta for w in weights]


def ascent_step(grads, scales, step_size, normalize, norm=None):
    """One ascent step of length `step_size` along the gradient (in the T-scaled geometry).

    `norm`: ||T g|| if the caller has it already (one pass less over the gradients)."""
    if scales is None:
        scaled, direction = grads, grads
    else:
        scaled = [s * g for s, g in zip(scales, grads)]
        direction = [s * sg for s, sg in zip(scales, scaled)]
    if not normalize:
        return [tf.cast(step_size, d.dtype) * d for d in direction]
    norm = global_norm(scaled) if norm is None else norm
    inv_norm = tf.cast(step_size, norm.dtype) / (norm + _TINY)
    return [tf.cast(inv_norm, d.dtype) * d for d in direction]


def project_to_ball(delta, scales, rho):
    """Rescales delta onto the rho-ball when it lies outside (||T^-1 delta|| <= rho for ASAM)."""
    measured = delta if scales is None else [d / s for d, s in zip(delta, scales)]
    norm = global_norm(measured)
    factor = tf.minimum(tf.ones_like(norm), tf.cast(rho, norm.dtype) / (norm + _TINY))
    return [tf.cast(factor, d.dtype) * d for d in delta]


def perturbation(ascent, grad, grad_at, weights, rho, grad_norm=None, delta=None):
    """eps after `ascent.steps` steps, starting from `delta` (default 0).

    Args:
        ascent: an `Ascent`.
        grad: the gradient at w + delta (at w when delta is None), a list like `weights`.
        grad_at: function delta -> gradient at w + delta, for the steps after the first.
        weights: the weights w (for ASAM's scales).
        rho: the radius (a scalar tensor or float).
        grad_norm: ||grad||, if known (saves a pass for the plain normalized ascent).
        delta: a starting perturbation (e.g. a random one), or None.
    """
    scales = adaptive_scales(weights, ascent, grad[0].dtype)
    step_size = rho * ascent.step_mult
    project = ascent.projects()
    for step in range(ascent.steps):
        if step > 0:
            grad, grad_norm = grad_at(delta), None
        norm = grad_norm if scales is None and delta is None else None
        move = ascent_step(grad, scales, step_size, ascent.normalize, norm=norm)
        delta = move if delta is None else [d + e for d, e in zip(delta, move)]
        if project:
            delta = project_to_ball(delta, scales, rho)
    return delta
