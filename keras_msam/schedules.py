"""The project's learning-rate schedules, as serializable Keras `LearningRateSchedule`s.

Every schedule except `Constant` is parametrized by `total_steps` (T) and expressed in fractions of
it, so a recipe can change the number of epochs without touching the schedule. All schedules are
evaluated on the optimizer step t = 0, 1, ..., T - 1 (steps past T keep the last value).

Boundary convention: a change "at fraction p" takes effect at the first step t with t >= p * T.

- `Piecewise(lr, T)`: the deep-net papers' schedule, lr until 50 %, lr / 10 until 75 %, lr / 100 after.
- `Cosine(lr, T)`: lr * (1 + cos(pi * t / T)) / 2, from lr at t = 0 to 0 at t = T.
- `Cyclic(lr, T)`: one triangle, linear from 0 (t = 0) up to lr at `peak` * T (default 40 %), then
  linear down to 0 at t = T.
- `Constant(lr)`.
- `LargeStep(lr, T, decay_at=p)`: "SGD with large step sizes learns sparse features": a long phase at
  the large step lr, then lr / factor from p * T and lr / factor^2 from `second_decay_at` * T (90 %).
  With `warmup=True` the large phase is the exponential warm-up lr0 * e^(rate * t / T) (rate = 100 in
  the paper) for t / T < p. The reference gives no value of lr0; we read it as the one that makes the
  warm-up end exactly at lr when the phase ends: lr0 = lr * e^(-rate * p), i.e.
  lr(t) = lr * e^(rate * (t / T - p)) for t < p * T. (With rate = 100 the step size grows by a factor
  e every 1 % of training, so effectively only the last few % of the phase run near lr.)
  `warmup_end=w < p` instead ends the warm-up at w (lr0 = lr * e^(-rate * w)) and holds lr on [w, p).
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
    """lr at every step."""

    def __init__(self, lr):
        self.lr = _check_lr(lr)

    def __call__(self, step):
        return ops.cast(self.lr, "float32") + 0.0 * ops.cast(step, "float32")

    def get_config(self):
        return {"lr": self.lr}


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


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LargeStep(_Schedule):
    """Large step lr until `decay_at` * T, then lr / factor, and lr / factor^2 from `second_decay_at` * T.

    Args:
        lr: the large step size.
        total_steps: T.
        decay_at: p, the fraction of training run at the large step (0.1, 0.3, 0.5 in the paper);
            p = 1 never decays (a constant large step).
        warmup: exponential warm-up over the large phase, lr * e^(warmup_rate * (t / T - p)) for t < p T
            (i.e. lr0 * e^(warmup_rate * t / T) with lr0 = lr * e^(-warmup_rate * p); see module doc).
        second_decay_at: fraction where the second decay happens (0.9); None: no second decay.
            Ignored while < decay_at (a second decay cannot precede the first).
        factor: each decay divides the step size by this (10).
        warmup_rate: the 100 of e^(100 t / T).
        warmup_end: fraction at which the warm-up reaches lr (None: decay_at); lr is held from there on.
    """

    def __init__(
        self,
        lr,
        total_steps,
        decay_at=0.5,
        warmup=False,
        second_decay_at=0.9,
        factor=10.0,
        warmup_rate=100.0,
        warmup_end=None,
    ):
        self.lr = _check_lr(lr)
        self.total_steps = _check_total_steps(total_steps)
        self.decay_at = _check_fraction(decay_at, "decay_at")
        self.warmup = bool(warmup)
        if second_decay_at is not None:
            second_decay_at = _check_fraction(second_decay_at, "second_decay_at")
        self.second_decay_at = second_decay_at
        if not isinstance(factor, (int, float)) or not factor >= 1:
            raise ValueError(f"factor must be a float >= 1 (the step size is divided by it); got factor={factor!r}.")
        self.factor = float(factor)
        if not isinstance(warmup_rate, (int, float)) or not warmup_rate > 0:
            raise ValueError(f"warmup_rate must be a float > 0; got warmup_rate={warmup_rate!r}.")
        self.warmup_rate = float(warmup_rate)
        if warmup_end is not None:
            warmup_end = _check_fraction(warmup_end, "warmup_end", low_open=False)
        self.warmup_end = warmup_end

    def __call__(self, step):
        t = ops.cast(step, "float32")
        x = t / float(self.total_steps)
        if self.warmup:
            end = self.decay_at if self.warmup_end is None else min(self.warmup_end, self.decay_at)
            large = self.lr * ops.exp(self.warmup_rate * (ops.minimum(x, end) - end))
        else:
            large = self.lr + 0.0 * t
        lr = ops.where(t >= self.decay_at * self.total_steps, self.lr / self.factor, large)
        if self.second_decay_at is not None and self.second_decay_at >= self.decay_at:
            lr = ops.where(t >= self.second_decay_at * self.total_steps, self.lr / self.factor**2, lr)
        return lr

    def get_config(self):
        return {
            "lr": self.lr,
            "total_steps": self.total_steps,
            "decay_at": self.decay_at,
            "warmup": self.warmup,
            "second_decay_at": self.second_decay_at,
            "factor": self.factor,
            "warmup_rate": self.warmup_rate,
            "warmup_end": self.warmup_end,
        }


__all__ = ["Constant", "Cosine", "Cyclic", "LargeStep", "Piecewise"]
