"""m-sharpness of a trained model, as evaluated in "Towards Understanding Sharpness-Aware Minimization".

For each batch B of m training points (n points in all, n / m batches):

    delta_0 = 0
    delta_{t+1} = project_rho( delta_t + step_mult * rho * g_t / ||g_t|| ),  g_t = grad L_B(w + delta_t)
    sharpness_B = L_B(w + delta_T) - L_B(w)                                 (T = `steps`)

and the m-sharpness is the average of sharpness_B over the batches. The ascent reuses
`keras_msam.ascent` (the same step and projection as `SAMModel`); all model calls are
`stateless_call`s, so the model's weights and BatchNorm statistics are never changed.

L is `loss_fn` alone (e.g. cross-entropy): regularisation losses such as weight decay are not part
of the sharpness, as in the papers. All trainable variables are perturbed.

BatchNorm mode (`bn`):
- "eval" (default): BatchNorm uses its moving statistics, i.e. the network as it is deployed; the
  sharpness then only depends on the weights.
- "train": BatchNorm normalises with the statistics of the batch of m points (as during SAM
  training with m-sized shards), so the loss itself depends on m; the moving statistics are still
  left untouched.
"""

import numpy as np
import tensorflow as tf

from keras_msam import ascent

BN_MODES = ("eval", "train")


def _check(rho, m, steps, step_mult, n, bn, num_points):
    if rho is None or float(rho) < 0:
        raise ValueError(f"rho must be a float >= 0; got rho={rho!r}.")
    if not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be a positive int (points per batch); got m={m!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got steps={steps!r}.")
    if step_mult <= 0:
        raise ValueError(f"step_mult must be > 0; got step_mult={step_mult!r}.")
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}; got bn={bn!r}.")
    if n is not None and (not isinstance(n, int) or n < m):
        raise ValueError(f"n must be an int >= m={m} (points evaluated); got n={n!r}.")
    if num_points < m:
        raise ValueError(f"m={m} is larger than the {num_points} points given; pass more points or a smaller m.")


def m_sharpness(model, x, y, loss_fn, rho, m, steps=20, step_mult=0.1, n=256, bn="eval", normalize=True):
    """The m-sharpness of `model` on the first `n` points of (x, y); see the module docstring.

    Args:
        model: a built Keras model (for a `SAMModel`, pass its `.inner`, or it is unwrapped).
        x, y: arrays (or tensors) of training inputs and targets; the first n points are used.
        loss_fn: a Keras loss (object or function `loss_fn(y_true, y_pred)`), reduced to a mean.
        rho: radius of the L2 ball of perturbations.
        m: points per batch (the "m" of m-sharpness); n // m batches are evaluated (incomplete
            last batch dropped).
        steps: normalized ascent steps per batch.
        step_mult: each ascent step has length step_mult * rho (then projected onto the rho-ball).
        n: number of points (None: all given points).
        bn: "eval" or "train" BatchNorm, see the module docstring.
        normalize: normalized steps (default; the papers' evaluation) or unnormalized rho * g steps
            (then without projection, as in `SAMModel`).

    Returns:
        dict with "sharpness" (mean over batches of L(w + delta) - L(w)), "loss" (mean L(w)),
        "perturbed_loss" (mean L(w + delta)), "per_batch" (list of the batch sharpness values),
        "delta_norm" (mean ||delta||) and "batches".
    """
    model = getattr(model, "inner", model)
    x, y = np.asarray(x), np.asarray(y)
    _check(rho, m, steps, step_mult, n, bn, len(x))
    n = len(x) if n is None else min(n, len(x))
    num_batches = n // m
    weights = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
    state = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
    training = bn == "train"
    rho = float(rho)
    kwargs = {"training": training} if model._call_has_training_arg else {}

    def loss_at(w, xb, yb):
        y_pred, _ = model.stateless_call(w, state, xb, **kwargs)
        return tf.reduce_mean(tf.cast(loss_fn(yb, y_pred), tf.float32))

    @tf.function(reduce_retracing=True)
    def ascend(xb, yb, delta):
        w = [wi + tf.cast(d, wi.dtype) for wi, d in zip(weights, delta)]
        with tf.GradientTape() as tape:
            tape.watch(w)
            loss = loss_at(w, xb, yb)
        grads = tape.gradient(loss, w)
        grads = [tf.zeros_like(wi, tf.float32) if g is None else tf.cast(g, tf.float32) for g, wi in zip(grads, w)]
        delta = [d + s for d, s in zip(delta, ascent.ascent_step(grads, None, rho * step_mult, normalize))]
        if normalize:
            delta = ascent.project_to_ball(delta, None, rho)
        return delta

    @tf.function(reduce_retracing=True)
    def evaluate(xb, yb, delta):
        w = [wi + tf.cast(d, wi.dtype) for wi, d in zip(weights, delta)]
        return loss_at(weights, xb, yb), loss_at(w, xb, yb), ascent.global_norm(delta)

    per_batch, losses, perturbed, norms = [], [], [], []
    for b in range(num_batches):
        xb = tf.convert_to_tensor(x[b * m : (b + 1) * m])
        yb = tf.convert_to_tensor(y[b * m : (b + 1) * m])
        delta = [tf.zeros_like(w, tf.float32) for w in weights]
        for _ in range(steps):
            delta = ascend(xb, yb, delta)
        loss, loss_delta, norm = (float(t) for t in evaluate(xb, yb, delta))
        per_batch.append(loss_delta - loss)
        losses.append(loss)
        perturbed.append(loss_delta)
        norms.append(norm)
    return {
        "sharpness": float(np.mean(per_batch)),
        "loss": float(np.mean(losses)),
        "perturbed_loss": float(np.mean(perturbed)),
        "per_batch": per_batch,
        "delta_norm": float(np.mean(norms)),
        "batches": num_batches,
    }
