"""The project's learning-rate schedules, as serializable Keras `LearningRateSchedule`s.

Every schedule except `Constant` is parametrized by `total_steps` (T) and expressed in fractions of
it, so a recipe can change the number of epochs without touching the schedule. All schedules are
evaluated on the optimizer step t = 0, 1, ..., T - 1 (steps past T keep the last value).

Boundary convention: a change "at fraction p" takes effect at the first step t with t >= p * T
(`WarmupDecay`: t >= floor(p * T), the papers' `int(p * num_iter)`).

- `Piecewise(lr, T)`: the deep-net papers' schedule, lr until 50 %, lr / 10 until 75 %, lr / 100 after.
- `Cosine(lr, T)`: lr * (1 + cos(pi * t / T)) / 2, from lr at t = 0 to 0 at t = T.
- `Cyclic(lr, T)`: one triangle, linear from 0 (t = 0) up to lr at `peak` * T (default 40 %), then
  linear down to 0 at t = T.
- `Constant(lr)`.
- `LargeStep(lr, T, decay_at=p, warmup_exp=w, warmup_factor=wf)`: "SGD with large step sizes learns
  sparse features", deep nets (`deep_nets/utils_train.py`): an exponential (w > 1), polynomial
  (w < 1) or linear (w = 1) warm-up from lr for t / T < p, then the warm-up's value at p divided by 10,
  and by 100 from 90 % (see the class for the exact formula and the papers' one-step time offset).
- `WarmupDecay(lr, T, decay_at=p, decay=k, warmup_factor=f, warmup_exponent=e)`: the same paper's toy
  nets (`fc_nets.py::train_fc_net`, `diag_nets.py`): lr * (1 + (f - 1) (t / T)^e) until floor(p T),
  then that value / k to the end (one decay; f = 1: a constant step decayed once).

`Constant`, `LargeStep` and `WarmupDecay` take `dtype="float64"` for float64 models, so that a step
size like 0.282 reaches the float64 weights without a float32 rounding.
"""

import math

import keras
from keras import ops

_PACKAGE = "keras_msam"


def _check_lr(lr, name="lr"):
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise ValueError(f"{name} must be a float > 0; got {name}={lr!r}.")
    return float(lr)


def _check_total_steps(total_steps):
    if not isinstance(total_steps, int) or isinstance(total_steps, bool) or total_steps < 1:
        raise ValueError(
            f"total_steps must be a positive int (the number of optimizer steps of the run, "
            f"e.g. epochs * steps_per_epoch); got total_steps={total_steps!r}."
        )
    return total_steps


def _check_fraction(value, name, low_open=True):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0 < value <= 1 if low_open else 0 <= value <= 1)
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{name} must be a fraction of total_steps in {interval}; got {name}={value!r}.")
    return float(value)


def _progress(step, total_steps):
    """t / T as a float32 tensor, clipped to [0, 1]."""
    t = ops.cast(step, "float32")
    return ops.clip(t / float(total_steps), 0.0, 1.0)


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """Common `from_config`: the config holds exactly the constructor arguments."""

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("boundaries", "factors"):
            if key in config:
                config[key] = tuple(config[key])
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Constant(_Schedule):
    """lr at every step (`dtype`: of the step size, "float64" for float64 models)."""

    def __init__(self, lr, dtype="float32"):
        self.lr = _check_lr(lr)
        self.dtype = _check_dtype(dtype)

    def __call__(self, step):
        return ops.cast(self.lr, self.dtype) + 0.0 * ops.cast(step, self.dtype)

    def get_config(self):
        return {"lr": self.lr, "dtype": self.dtype}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Piecewise(_Schedule):
    """lr * factors[i] on [boundaries[i-1] * T, boundaries[i] * T) (boundaries are fractions of T).

    Default: lr until 50 %, lr / 10 until 75 %, lr / 100 after (the deep-net papers' schedule).
    """

    def __init__(self, lr, total_steps, boundaries=(0.5, 0.75), factors=(1.0, 0.1, 0.01)):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)
        boundaries = tuple(_check_fraction(b, "boundaries[i]") for b in boundaries)
        if list(boundaries) != sorted(boundaries):
            raise ValueError(f"boundaries must be increasing fractions of total_steps; got {boundaries!r}.")
        factors = tuple(float(f) for f in factors)
        if len(factors) != len(boundaries) + 1:
            raise ValueError(
                f"factors needs one value per phase, len(boundaries) + 1 = {len(boundaries) + 1}; "
                f"got factors={factors!r} for boundaries={boundaries!r}."
            )
        self.boundaries, self.factors = boundaries, factors

    def __call__(self, step):
        t = ops.cast(step, "float32")
        lr = ops.cast(self.lr * self.factors[0], "float32") + 0.0 * t
        for boundary, factor in zip(self.boundaries, self.factors[1:]):
            lr = ops.where(t >= boundary * self.total_steps, self.lr * factor, lr)
        return lr

    def get_config(self):
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "boundaries": list(self.boundaries),
            "factors": list(self.factors),
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Cosine(_Schedule):
    """lr * (1 + cos(pi * t / T)) / 2: lr at t = 0, lr / 2 at T / 2, 0 at t >= T."""

    def __init__(self, lr, total_steps):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)

    def __call__(self, step):
        return self.lr * 0.5 * (1.0 + ops.cos(math.pi * _progress(step, self.total_steps)))

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Cyclic(_Schedule):
    """One triangle: linear from 0 at t = 0 up to lr at `peak` * T (default 40 %), then down to 0 at T."""

    def __init__(self, lr, total_steps, peak=0.4):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)
        self.peak = _check_fraction(peak, "peak")
        if self.peak >= 1:
            raise ValueError(f"peak must be < 1 so that the schedule comes back down; got peak={peak!r}.")

    def __call__(self, step):
        x = _progress(step, self.total_steps)
        up = x / self.peak
        down = (1.0 - x) / (1.0 - self.peak)
        return self.lr * ops.where(x < self.peak, up, down)

    def get_config(self):
        return {"lr": self.lr, "total_steps": self.total_steps, "peak": self.peak}


def _check_positive(value, name, hint=""):
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a float > 0{hint}; got {name}={value!r}.")
    return float(value)


def _check_dtype(dtype):
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64' (the dtype of the step size); got dtype={dtype!r}.")
    return dtype


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LargeStep(_Schedule):
    """The deep-net schedule of "SGD with large step sizes learns sparse features" (`piecewise_0Xepochs`).

    With x = t / T, p = `decay_at`, w = `warmup_exp`, wf = `warmup_factor`, f = `factor` (10) and
    s = `second_decay_at` (0.9), the papers' `deep_nets/utils_train.py::get_lr_schedule`:

    - x < p, the large-step phase, one of three warm-ups:
      - w > 1 (exponential): lr * w^(100 x), e.g. lr_init 0.75 and w = 1.05 rise to 0.75 * 1.05^50 = 8.60
        at p = 0.5;
      - 0 < w < 1 (polynomial): lr * (1 + (100 x)^w);
      - w = 1 (linear): lr * (1 + (wf - 1) * x / 0.5), which reaches wf * lr at x = 0.5 whatever p is;
    - p <= x < s: peak / f;
    - x >= s: peak / f^2 (None: no second decay, peak / f until the end);

    where peak is the warm-up's value at x = p: lr * w^(100 p), lr * (1 + (100 p)^w), or, in the linear
    branch, (p / 0.5) * wf * lr (the papers' code, so that with wf = 1 the first decay divides lr by
    10 / (2 p): p = 0.1 gives lr / 50, p = 0.5 lr / 10). p = 1 never decays.

    Time: step t (0-based) uses x = t / T. The papers evaluate their schedule after the step, at
    x = (k + 1) / K for step k, so each of our boundaries falls one step later than theirs (their
    first decayed step is pT - 1, ours pT): a one-step offset, harmless over thousands of steps.

    Args:
        lr: lr_init, the step size at t = 0.
        total_steps: T.
        decay_at: p in (0, 1].
        warmup_exp: w > 0 (1: the linear branch).
        warmup_factor: wf > 0, used only by the linear branch (warmup_exp = 1).
        second_decay_at: s, or None.
        factor: f >= 1, each decay divides the step size by it.
        dtype: of the step size ("float64" for float64 models: the optimizer casts it to the weights').
    """

    def __init__(self, lr, total_steps, decay_at=0.5, warmup_exp=1.0, warmup_factor=1.0, second_decay_at=0.9,
                 factor=10.0, dtype="float32"):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)
        self.decay_at = _check_fraction(decay_at, "decay_at")
        self.warmup_exp = _check_positive(warmup_exp, "warmup_exp", " (> 1 exponential, < 1 polynomial, 1 linear)")
        self.warmup_factor = _check_positive(warmup_factor, "warmup_factor")
        if self.warmup_factor != 1.0 and self.warmup_exp != 1.0:
            raise ValueError(
                f"warmup_factor only applies to the linear warm-up (warmup_exp=1); got warmup_factor={warmup_factor!r} "
                f"with warmup_exp={warmup_exp!r}: drop one of them."
            )
        if second_decay_at is not None:
            second_decay_at = _check_fraction(second_decay_at, "second_decay_at")
        self.second_decay_at = second_decay_at
        if not isinstance(factor, (int, float)) or isinstance(factor, bool) or not factor >= 1:
            raise ValueError(f"factor must be a float >= 1 (the step size is divided by it); got factor={factor!r}.")
        self.factor = float(factor)
        self.dtype = _check_dtype(dtype)

    def _warmup(self, x):
        """The large-step phase at x = t / T, a tensor."""
        lr, w = self.lr, self.warmup_exp
        if w > 1:
            return lr * ops.exp(100.0 * math.log(w) * x)
        if w < 1:
            return lr * (1.0 + (100.0 * x) ** w)
        return lr * (1.0 + (self.warmup_factor - 1.0) * x / 0.5)

    @property
    def peak(self):
        """The value the decays divide: the warm-up's value at p (linear branch: (p / 0.5) * wf * lr)."""
        lr, w, p = self.lr, self.warmup_exp, self.decay_at
        if w > 1:
            return lr * w ** (100 * p)
        if w < 1:
            return lr * (1 + (100 * p) ** w)
        return p / 0.5 * self.warmup_factor * lr

    def __call__(self, step):
        t = ops.cast(step, self.dtype)
        x = t / ops.cast(self.total_steps, self.dtype)
        lr = ops.where(t < self.decay_at * self.total_steps, self._warmup(x), self.peak / self.factor)
        if self.second_decay_at is not None:
            late = t >= max(self.decay_at, self.second_decay_at) * self.total_steps
            lr = ops.where(late, self.peak / self.factor**2, lr)
        return lr

    def get_config(self):
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "decay_at": self.decay_at,
            "warmup_exp": self.warmup_exp,
            "warmup_factor": self.warmup_factor,
            "second_decay_at": self.second_decay_at,
            "factor": self.factor,
            "dtype": self.dtype,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupDecay(_Schedule):
    """The toy nets' schedule of "SGD with large step sizes learns sparse features": an optional warm-up,
    then one decay (`fc_nets.py::train_fc_net`, `diag_nets.py::SGD` / `GD`).

    With th = floor(p T) (the papers' `int(p * num_iter)`), f = `warmup_factor`, e = `warmup_exponent`:

    - t < th: lr * (1 + (f - 1) * (t / T)^e). The ramp runs in t / T, not t / th, as in the papers' code;
      f = 1 is no warm-up;
    - t >= th: lr * (1 + (f - 1) * (th / T)^e) / decay, held to the end;
    - `second_decay_at` s (not in the papers; our old CPU settings): from floor(s T) on, divided by
      `decay` once more.

    p = 0 decays from the start: lr / decay throughout (with decay = 1 a constant step, the papers'
    constant runs). The fc nets decay before step th, as here; the diagonal nets' NumPy loop divides
    after step th, so there the decay comes one step earlier than in the papers.

    Args:
        lr: the step size gamma at t = 0.
        total_steps: T (the papers' `num_iter`).
        decay_at: p in [0, 1].
        decay: >= 1, divides the step size at th.
        warmup_factor: f > 0 (the papers' `gamma_warmup_factor_max`; 1: none).
        warmup_exponent: e > 0 (1: linear).
        second_decay_at: s in [p, 1], or None.
        dtype: of the step size ("float64" for float64 models).
    """

    def __init__(self, lr, total_steps, decay_at=0.0, decay=1.0, warmup_factor=1.0, warmup_exponent=1.0,
                 second_decay_at=None, dtype="float32"):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)
        self.decay_at = _check_fraction(decay_at, "decay_at", low_open=False)
        if not isinstance(decay, (int, float)) or isinstance(decay, bool) or not decay >= 1:
            raise ValueError(f"decay must be a float >= 1 (the step size is divided by it); got decay={decay!r}.")
        self.decay = float(decay)
        self.warmup_factor = _check_positive(warmup_factor, "warmup_factor", " (1: no warm-up)")
        self.warmup_exponent = _check_positive(warmup_exponent, "warmup_exponent")
        if second_decay_at is not None:
            second_decay_at = _check_fraction(second_decay_at, "second_decay_at")
            if second_decay_at < self.decay_at:
                raise ValueError(f"second_decay_at must be >= decay_at={decay_at!r}; got "
                                 f"second_decay_at={second_decay_at!r}.")
        self.second_decay_at = second_decay_at
        self.dtype = _check_dtype(dtype)

    @property
    def decay_step(self):
        """th = floor(p T), the first decayed step."""
        return int(self.decay_at * self.total_steps)

    def _warmup(self, fraction):
        return self.lr * (1.0 + (self.warmup_factor - 1.0) * fraction**self.warmup_exponent)

    def __call__(self, step):
        t = ops.cast(step, self.dtype)
        x = t / ops.cast(self.total_steps, self.dtype)
        decayed = float(self._warmup(self.decay_step / self.total_steps)) / self.decay
        lr = ops.where(t < self.decay_step, self._warmup(x), decayed)
        if self.second_decay_at is not None:
            lr = ops.where(t >= int(self.second_decay_at * self.total_steps), decayed / self.decay, lr)
        return lr

    def get_config(self):
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "decay_at": self.decay_at,
            "decay": self.decay,
            "warmup_factor": self.warmup_factor,
            "warmup_exponent": self.warmup_exponent,
            "second_decay_at": self.second_decay_at,
            "dtype": self.dtype,
        }


__all__ = ["Constant", "Cosine", "Cyclic", "LargeStep", "Piecewise", "WarmupDecay"]
