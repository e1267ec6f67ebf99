"""m-sharpness of a trained model, as evaluated in "Towards Understanding Sharpness-Aware Minimization".

For each batch B of m training points (the first n points, n // m batches), from each of `restarts`
starting points delta_0 (0, or with `random_init` a random point of the rho-sphere):

    delta_{t+1} = project_rho( delta_t + step_mult * rho * g_t / ||g_t|| ),  g_t = grad f_B(w + delta_t)
    sharpness_B = max over restarts of L_B(w + delta_T) - L_B(w)                   (T = `steps`)

and the m-sharpness is the average of sharpness_B over the batches. f_B is the loss L_B, or with
`random_init` the papers' targeted objective -L_B(w; y_target), y_target a uniformly drawn other class
for every point (deep_nets/utils_eval.py). The ascent is the core's one (`keras_msam.ascent.perturbation`
with `Ascent(normalize, steps, step_mult, project=True)`: the same step and projection as `SAMModel`);
`normalize=False` takes steps of step_mult * rho * g, projected (the papers' `--no_grad_norm`).

`error_sharpness` is err_B(w + delta) - err_B(w) of the selected restart (classification only).

`selection`:
- "loss" (default): per batch, the restart with the largest L_B(w + delta) (the worst case).
- "papers": reproduces the papers' `eval_sharpness` (utils_eval.py:258, 291-296, 303), slip included:
  a restart is kept only if its error at w + delta is strictly larger than that of the restarts kept
  before, starting from 0; when no restart misclassifies any point of B, the batch contributes
  -L_B(w) (not L_B(w + delta) - L_B(w)). Only to compare with the papers' numbers.

L is `loss_fn` alone (e.g. cross-entropy): regularisation losses such as weight decay are not part of
the sharpness, as in the papers. All trainable variables are perturbed. All model calls are
`stateless_call`s: the model's weights and BatchNorm statistics are never changed.

BatchNorm mode (`bn`):
- "eval" (default, the papers'): BatchNorm uses its moving statistics, i.e. the network as deployed.
- "train": BatchNorm normalises with the statistics of the batch of m points (as during m-SAM
  training), so the loss itself depends on m; the moving statistics are still left untouched.
"""

import numpy as np
import tensorflow as tf

from keras_msam import ascent as ascent_lib

BN_MODES = ("eval", "train")
SELECTIONS = ("loss", "papers")


def _check(rho, m, steps, step_mult, n, bn, num_points, restarts, selection):
    if rho is None or not float(rho) >= 0:
        raise ValueError(f"rho must be a float >= 0; got rho={rho!r}.")
    if isinstance(m, bool) or not isinstance(m, (int, np.integer)) or m < 1:
        raise ValueError(f"m must be a positive int (points per batch); got m={m!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1; got steps={steps!r}.")
    if not step_mult > 0:
        raise ValueError(f"step_mult must be > 0; got step_mult={step_mult!r}.")
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {BN_MODES}; got bn={bn!r}.")
    if not isinstance(restarts, int) or restarts < 1:
        raise ValueError(f"restarts must be an int >= 1; got restarts={restarts!r}.")
    if selection not in SELECTIONS:
        raise ValueError(f"selection must be one of {SELECTIONS}; got selection={selection!r}.")
    if n is not None and (not isinstance(n, int) or n < m):
        raise ValueError(f"n must be an int >= m={m} (points evaluated); got n={n!r}.")
    if num_points < m:
        raise ValueError(f"m={m} is larger than the {num_points} points given; pass more points or a smaller m.")


def random_start(weights, rho, seeds):
    """A point of the rho-sphere: a standard Gaussian over all `weights`, scaled to norm rho (the papers'
    `random_init_on_sphere_delta_dict`). `seeds`: two int64 (TensorFlow stateless seed)."""
    seeds = tf.cast(seeds, tf.int64)
    noise = [tf.random.stateless_normal(tf.shape(w), seed=seeds + 7919 * i, dtype=w.dtype) for i, w in enumerate(weights)]
    scale = rho / ascent_lib.global_norm(noise)
    return [tf.cast(scale, n.dtype) * n for n in noise]


def random_targets(y, num_classes, seeds):
    """For each label, a class drawn uniformly among the num_classes - 1 others (the papers' `y_target`)."""
    labels = tf.cast(tf.reshape(y, [-1]), tf.int32)
    shift = tf.random.stateless_uniform(tf.shape(labels), seed=tf.cast(seeds, tf.int64) + 104729, minval=1,
                                        maxval=num_classes, dtype=tf.int32)
    return (labels + shift) % num_classes


class _Evaluator:
    """The compiled pieces of one evaluation: loss and error at w + delta, and one restart's ascent."""

    def __init__(self, model, loss_fn, rho, ascent, bn, classification, num_classes, seed, random_init):
        self.model, self.loss_fn, self.ascent, self.random_init = model, loss_fn, ascent, random_init
        self.rho, self.classification, self.num_classes, self.seed = rho, classification, num_classes, seed
        self.weights = [tf.convert_to_tensor(v.value) for v in model.trainable_variables]
        self.state = [tf.convert_to_tensor(v.value) for v in model.non_trainable_variables]
        self.kwargs = {"training": bn == "train"} if model._call_has_training_arg else {}
        self.at = tf.function(self._at, reduce_retracing=True)
        self.gradient = tf.function(self._gradient, reduce_retracing=True)
        self.start = tf.function(self._start, reduce_retracing=True)

    def _shifted(self, delta):
        if delta is None:
            return self.weights
        return [w + tf.cast(d, w.dtype) for w, d in zip(self.weights, delta)]

    def _outputs(self, delta, x):
        y_pred, _ = self.model.stateless_call(self._shifted(delta), self.state, x, **self.kwargs)
        return y_pred

    def _loss_error(self, y_pred, y):
        loss = tf.reduce_mean(tf.cast(self.loss_fn(y, y_pred), tf.float32))
        if not self.classification:
            return loss, tf.constant(float("nan"))
        wrong = tf.not_equal(tf.argmax(y_pred, axis=-1, output_type=tf.int32), tf.cast(tf.reshape(y, [-1]), tf.int32))
        return loss, tf.reduce_mean(tf.cast(wrong, tf.float32))

    def _at(self, x, y, delta):
        """(loss, error) at w + delta (delta None: at w)."""
        return self._loss_error(self._outputs(delta, x), y)

    def _gradient(self, x, target, delta, sign):
        """sign * grad of the mean loss against `target` at w + delta (delta None: at w)."""
        shifted = self._shifted(delta)
        with tf.GradientTape() as tape:
            tape.watch(shifted)
            y_pred, _ = self.model.stateless_call(shifted, self.state, x, **self.kwargs)
            value = sign * tf.reduce_mean(tf.cast(self.loss_fn(target, y_pred), tf.float32))
        grads = tape.gradient(value, shifted)
        return [tf.zeros_like(w) if g is None else tf.cast(g, w.dtype) for g, w in zip(grads, self.weights)]

    def _start(self, y, seeds):
        return random_start(self.weights, self.rho, seeds), random_targets(y, self.num_classes, seeds)

    def restart(self, x, y, restart_seed):
        """One restart: the core's ascent (`ascent.perturbation`, its steps run here in Python, each
        gradient a compiled call), then (loss, error, ||delta||) at w + delta."""
        delta, target, sign = None, y, 1.0
        if self.random_init:  # the papers' targeted objective: -L towards a random other class
            delta, target = self.start(y, tf.constant([self.seed, restart_seed], tf.int64))
            sign = -1.0

        def grad_at(d):
            return self.gradient(x, target, d, tf.constant(sign))

        delta = ascent_lib.perturbation(self.ascent, grad_at(delta), grad_at, self.weights, self.rho, delta=delta)
        loss, error = self.at(x, y, delta)
        return loss, error, ascent_lib.global_norm(delta)


def m_sharpness(model, x, y, loss_fn, rho=0.1, m=128, steps=20, step_mult=0.1, n=256, bn="eval", normalize=True,
                restarts=1, random_init=False, selection="loss", seed=0):
    """The m-sharpness of `model` on the first `n` points of (x, y); see the module docstring.

    Args:
        model: a built Keras model (for a `SAMModel`, pass its `.inner`, or it is unwrapped).
        x, y: arrays (or tensors) of training inputs and targets (clean labels, as the papers); the first
            n points are used.
        loss_fn: a Keras loss (object or function `loss_fn(y_true, y_pred)`), reduced to a mean.
        rho: radius of the L2 ball of perturbations (0.1: the papers' `eval_sharpness.py` default).
        m: points per batch (the "m" of m-sharpness); n // m batches (an incomplete last one is dropped).
        steps: ascent steps per restart (20: the papers').
        step_mult: each ascent step has length step_mult * rho (0.1: the papers'), then delta is
            projected onto the rho-ball.
        n: number of points (None: all given points; 256: the papers').
        bn: "eval" or "train" BatchNorm, see the module docstring.
        normalize: normalized steps (the papers' default) or unnormalized step_mult * rho * g steps.
        restarts: ascents per batch; the selected one counts (see `selection`).
        random_init: start each restart at a random point of the rho-sphere (Gaussian over all
            weights, normalized) and ascend the papers' targeted objective (needs sparse class labels).
        selection: "loss" (the worst case over restarts) or "papers" (their `err > final_err` rule, slip
            included; needs class labels).
        seed: seed of the random starts and targets (batch b, restart r use the stream (seed, b * restarts + r)).

    Returns:
        dict with "sharpness" (mean over batches of the selected L(w + delta) - L(w)), "error_sharpness"
        (the same for the error; None for non-classification targets), "loss" and "error" (mean at w),
        "perturbed_loss" and "perturbed_error" (mean at w + delta of the selected restarts),
        "per_batch" (the batch sharpness values), "delta_norm" (mean ||delta||), "batches", "m", "rho".
    """
    return m_sharpness_sweep(model, x, y, loss_fn, (m,), rho=rho, steps=steps, step_mult=step_mult, n=n, bn=bn,
                             normalize=normalize, restarts=restarts, random_init=random_init, selection=selection,
                             seed=seed)[int(m)]


def m_sharpness_sweep(model, x, y, loss_fn, ms, rho=0.1, steps=20, step_mult=0.1, n=256, bn="eval", normalize=True,
                      restarts=1, random_init=False, selection="loss", seed=0):
    """`m_sharpness` for every m in `ms`, on the same points with the same settings (one compiled gradient
    serves them all): {m: result dict}, in the order given."""
    model = getattr(model, "inner", model)
    x, y = np.asarray(x), np.asarray(y)
    ms = [ms] if isinstance(ms, (int, np.integer)) else list(ms)
    if not ms:
        raise ValueError("ms must hold at least one m (points per batch), e.g. ms=(1, 4, 16, 64, 128).")
    for m in ms:
        _check(rho, m, steps, step_mult, n, bn, len(x), restarts, selection)
    n = len(x) if n is None else min(n, len(x))
    num_classes = int(model.output_shape[-1]) if len(model.output_shape) == 2 else 1
    classification = np.issubdtype(y.dtype, np.integer) and y.ndim == 1 and num_classes > 1
    if (random_init or selection == "papers") and not classification:
        raise ValueError("random_init and selection='papers' need sparse integer class labels y and a model with "
                         f"one logit per class; got y of dtype {y.dtype} and shape {y.shape}, "
                         f"model output {model.output_shape}.")
    ascent = ascent_lib.Ascent(normalize=bool(normalize), steps=steps, step_mult=float(step_mult), project=True)
    evaluator = _Evaluator(model, loss_fn, float(rho), ascent, bn, classification, num_classes, seed, bool(random_init))
    return {int(m): _evaluate(evaluator, x, y, int(m), n, restarts, selection) for m in ms}


def _evaluate(evaluator, x, y, m, n, restarts, selection):
    """The m-sharpness result dict for one m (see `m_sharpness`)."""
    per_batch, per_batch_error, losses, errors, perturbed, perturbed_errors, norms = [], [], [], [], [], [], []
    for b in range(n // m):
        xb = tf.convert_to_tensor(x[b * m : (b + 1) * m])
        yb = tf.convert_to_tensor(y[b * m : (b + 1) * m])
        loss, error = (float(t) for t in evaluator.at(xb, yb, None))
        runs = [tuple(float(t) for t in evaluator.restart(xb, yb, b * restarts + r)) for r in range(restarts)]
        if selection == "loss":
            best_loss, best_error, best_norm = max(runs, key=lambda run: run[0])
        else:  # the papers' rule: best_obj = final_err = 0, kept only if err > final_err
            best_loss, best_error, best_norm = 0.0, 0.0, 0.0
            for run_loss, run_error, run_norm in runs:
                if run_error > best_error:
                    best_loss, best_error, best_norm = run_loss, run_error, run_norm
        per_batch.append(best_loss - loss)
        per_batch_error.append(best_error - error)
        losses.append(loss)
        errors.append(error)
        perturbed.append(best_loss)
        perturbed_errors.append(best_error)
        norms.append(best_norm)
    mean_or_none = (lambda v: float(np.mean(v))) if evaluator.classification else (lambda v: None)
    return {
        "sharpness": float(np.mean(per_batch)),
        "error_sharpness": mean_or_none(per_batch_error),
        "loss": float(np.mean(losses)),
        "error": mean_or_none(errors),
        "perturbed_loss": float(np.mean(perturbed)),
        "perturbed_error": mean_or_none(perturbed_errors),
        "per_batch": per_batch,
        "delta_norm": float(np.mean(norms)),
        "batches": n // m,
        "m": m,
        "rho": evaluator.rho,
    }
