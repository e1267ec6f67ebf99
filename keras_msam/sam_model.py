"""`SAMModel`: m-SAM as a Keras `Model` that wraps any built Keras model.

One training step on a (per-replica) batch of b examples split into shards S_1..S_k of m examples:

    g_j   = grad L_{S_j}(w)                      (loss over the shard, + regularisation)
    eps_j = rho * g_j / ||g_j||                  (see `ascent.py` for the variants)
    G_j   = grad L_{S_j}(w + eps_j)
    w    <- optimizer(sum_j |S_j| / b * G_j)

The shards are vectorized (`shards.py`): both passes run as one batched computation over shards, the
perturbed pass with per-shard weights. All model calls are `stateless_call`s, so nothing is ever
assigned to the weights during the ascent; BatchNorm statistics and RNG seeds come only from the
unperturbed pass, merged as if the shards had run one after another.
"""

import re
import warnings

import keras
import tensorflow as tf
from keras import tree
from keras.src.losses import loss as loss_module
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_msam import ascent, shards

SAM_LOGS = ("sam_loss", "sharpness", "grad_norm", "eps_norm", "grad_cosine", "rho", "m")
MAX_UNROLLED_SHARDS = 16
VECTORIZED_MEMORY_BUDGET = 2 * 1024**3
MIN_SHARDS_PER_VECTORIZED_PASS = 32
MAX_VECTORIZED_PASSES = 4


def _check_settings(rho, m, ascent_steps, step_mult, adaptive_eta, bn_in_ascent, shards_per_pass):
    if not callable(rho) and (rho is None or float(rho) < 0):
        raise ValueError(f"rho must be a float >= 0 or a schedule (callable of the step); got rho={rho!r}.")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
        raise ValueError(f"m must be a positive int (examples per shard) or None for the whole batch; got m={m!r}.")
    if not isinstance(ascent_steps, int) or ascent_steps < 1:
        raise ValueError(f"ascent_steps must be an int >= 1; got ascent_steps={ascent_steps!r}.")
    if step_mult <= 0:
        raise ValueError(f"step_mult must be > 0; got step_mult={step_mult!r}.")
    if adaptive_eta < 0:
        raise ValueError(f"adaptive_eta must be >= 0; got adaptive_eta={adaptive_eta!r}.")
    if bn_in_ascent not in ("batch", "frozen"):
        raise ValueError(f"bn_in_ascent must be 'batch' (ghost BN) or 'frozen' (inference mode); got {bn_in_ascent!r}.")
    if shards_per_pass not in (None, "auto") and (not isinstance(shards_per_pass, int) or shards_per_pass < 1):
        raise ValueError(f"shards_per_pass must be 'auto', None (all) or a positive int; got {shards_per_pass!r}.")


def check_sam_model(model, user):
    """TypeError naming `user` (a callback or tool) unless `model` is a SAMModel."""
    if not isinstance(model, SAMModel):
        raise TypeError(
            f"{user} needs a keras_msam.SAMModel; got a {type(model).__name__}. "
            "Wrap the network: SAMModel(model, rho=..., m=...)."
        )


def auto_shards_per_pass(num_shards, bytes_per_shard):
    """`shards_per_pass="auto"` for k shards: up to `MAX_UNROLLED_SHARDS` shards run as plain passes (1);
    more run as at most `MAX_VECTORIZED_PASSES` vectorized passes of at least
    `MIN_SHARDS_PER_VECTORIZED_PASS` shards (the smallest such divisor of k), unless the per-shard
    copies (`bytes_per_shard` each) of a pass that size exceed `VECTORIZED_MEMORY_BUDGET`: then the
    largest divisor of k that fits.

    A few passes rather than one: a pass of 128 one-example shards streams ~150 MB of im2col patches
    per convolution through the caches; passes of 32 ran the m = 1 step 6-15% faster (CPU, with and
    without XLA). At most 4, because every pass is compiled on its own (compile time grows with them).
    """
    if num_shards <= MAX_UNROLLED_SHARDS:
        return 1
    divisors = [d for d in range(1, num_shards + 1) if num_shards % d == 0]
    wanted = max(MIN_SHARDS_PER_VECTORIZED_PASS, -(-num_shards // MAX_VECTORIZED_PASSES))
    fits = max(1, VECTORIZED_MEMORY_BUDGET // bytes_per_shard)
    return min([d for d in divisors if wanted <= d <= fits] or [max(d for d in divisors if d <= fits)])


def _cosine(a, b):
    dot = tf.add_n([tf.reduce_sum(tf.cast(x, tf.float32) * tf.cast(y, tf.float32)) for x, y in zip(a, b)])
    return dot / (ascent.global_norm(a) * ascent.global_norm(b) + 1e-30)


@keras.saving.register_keras_serializable(package="keras_msam")
class SAMModel(keras.Model):
    """Trains a wrapped Keras model with m-SAM; `evaluate`, `predict` and `call` are the wrapped model's.

    Args:
        model: a built Keras model (Sequential, functional or subclassed).
        rho: ascent radius, a float >= 0 or a schedule `rho(step)` (e.g. a Keras
            `LearningRateSchedule`), evaluated on `optimizer.iterations`.
        m: examples per shard (per replica); None means one shard = the whole per-replica batch.
            A batch that m does not divide ends with a smaller shard, weighted by its size.
        normalize: eps = rho * g / ||g|| (True) or rho * g (False, the papers' theory).
        ascent_steps: k > 1 takes k ascent steps of size rho * step_mult, each projected back onto
            the rho-ball (when normalized).
        step_mult: step size of one ascent step, as a multiple of rho.
        adaptive: ASAM, the ascent scaled elementwise by |w| + adaptive_eta.
        exclude: regular expressions; trainable variables whose `path` matches one are not perturbed
            (and not counted in ||g||), e.g. `exclude=[r"batch_normalization", r"bias"]`.
        bn_in_ascent: "batch" (ghost BN: the ascent gradient uses the shard's batch statistics) or
            "frozen" (BatchNorm in inference mode for the ascent gradient, with the moving statistics
            of the start of the step; the statistics are then updated by a training-mode pass at w).
            The perturbed pass always uses the shard's batch statistics, and moving statistics only
            ever come from passes at w, merged as if ERM had run the shards one after another.
            Dropout: each shard draws its own mask, and the same mask serves its pass at w and at
            w + eps (sharpness is measured on one sub-network).
        shards_per_pass: how many shards run together as one vectorized pass (None: all of them).
            "auto": up to 16 shards run as separate plain passes (unrolled; fastest under XLA and
            no extra memory), more shards in up to 4 vectorized passes of at least 32 shards, fewer
            shards per pass where the per-shard copies of weights and gradients would exceed
            `VECTORIZED_MEMORY_BUDGET` bytes (see `auto_shards_per_pass`).
        sam_enabled: start with SAM on (True) or off (plain ERM step until switched on).
    """

    def __init__(
        self,
        model,
        rho=0.05,
        m=None,
        normalize=True,
        ascent_steps=1,
        step_mult=1.0,
        adaptive=False,
        adaptive_eta=0.0,
        exclude=(),
        bn_in_ascent="batch",
        shards_per_pass="auto",
        sam_enabled=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_settings(rho, m, ascent_steps, step_mult, adaptive_eta, bn_in_ascent, shards_per_pass)
        self.inner = model
        self.m = m
        self.normalize = bool(normalize)
        self.ascent_steps = ascent_steps
        self.step_mult = float(step_mult)
        self.adaptive = bool(adaptive)
        self.adaptive_eta = float(adaptive_eta)
        self.exclude = tuple(exclude)
        self.bn_in_ascent = bn_in_ascent
        self.shards_per_pass = shards_per_pass
        self.rho_schedule = rho if callable(rho) else None
        self._rho = keras.Variable(0.0 if callable(rho) else float(rho), trainable=False, name="sam_rho")
        self._sam_enabled = bool(sam_enabled)
        self._sam_trackers = [keras.metrics.Mean(name=n) for n in SAM_LOGS]
        if not model.built:
            raise ValueError(
                "SAMModel needs a built model: give it a keras.Input, or call model.build(input_shape) "
                "or model(x) once before wrapping it."
            )
        self.built = True

    # ----------------------------------------------------------------- runtime switches
    @property
    def rho(self):
        """The current radius (a float); assigning a float changes it without recompiling."""
        if self.rho_schedule is not None:
            return float(self.rho_schedule(self.optimizer.iterations))
        return float(self._rho.numpy())

    @rho.setter
    def rho(self, value):
        if callable(value) or value is None or float(value) < 0:
            raise ValueError(f"rho must be a float >= 0; got rho={value!r}.")
        if self.rho_schedule is not None:
            raise ValueError("This SAMModel follows a rho schedule; set rho_schedule=None before assigning rho.")
        self._rho.assign(float(value))

    @property
    def sam_enabled(self):
        """SAM steps (True) or plain one-pass ERM steps (False); assigning it rebuilds the train function.

        A Python switch, not a `tf.cond`: XLA on CPU runs convolutions inside a conditional (or a
        while loop) tens of times slower, so each setting gets its own trace (compiled once each)."""
        return self._sam_enabled

    @sam_enabled.setter
    def sam_enabled(self, value):
        if bool(value) != self._sam_enabled:
            self._sam_enabled = bool(value)
            if getattr(self, "train_function", None) is not None:
                self.make_train_function(force=True)

    def current_rho(self):
        """rho for this step as a float32 tensor (the schedule evaluated on optimizer.iterations)."""
        if self.rho_schedule is None:
            return tf.cast(self._rho, tf.float32)
        return tf.cast(self.rho_schedule(self.optimizer.iterations), tf.float32)

    # ----------------------------------------------------------------- Keras plumbing
    def call(self, inputs, training=False):
        return self.inner(inputs, training=training)

    def build(self, input_shape=None):
        if not self.inner.built:
            self.inner.build(input_shape)
        self.built = True

    @property
    def metrics(self):
        return super().metrics + self._sam_trackers

    def get_config(self):
        rho = keras.saving.serialize_keras_object(self.rho_schedule) if self.rho_schedule else float(self._rho.numpy())
        return {
            "model": keras.saving.serialize_keras_object(self.inner),
            "rho": rho,
            "m": self.m,
            "normalize": self.normalize,
            "ascent_steps": self.ascent_steps,
            "step_mult": self.step_mult,
            "adaptive": self.adaptive,
            "adaptive_eta": self.adaptive_eta,
            "exclude": list(self.exclude),
            "bn_in_ascent": self.bn_in_ascent,
            "shards_per_pass": self.shards_per_pass,
            "sam_enabled": self.sam_enabled,
            "name": self.name,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["model"] = keras.saving.deserialize_keras_object(config["model"], custom_objects=custom_objects)
        if isinstance(config["rho"], dict):
            config["rho"] = keras.saving.deserialize_keras_object(config["rho"], custom_objects=custom_objects)
        return cls(**config)

    # ----------------------------------------------------------------- the step
    def train_step(self, data):
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        weights = [v.value for v in self.inner.trainable_variables]
        state = [v.value for v in self.inner.non_trainable_variables]
        rho = self.current_rho()
        if self._sam_enabled:
            grads, y_pred, new_state, logs = self._sam_update(weights, state, x, y, sample_weight, rho)
        else:
            grads, y_pred, new_state, logs = self._erm_update(weights, state, x, y, sample_weight)
        self.optimizer.apply_gradients(zip(grads, self.inner.trainable_variables))
        for variable, value in zip(self.inner.non_trainable_variables, new_state):
            variable.assign(value)
        self._loss_tracker.update_state(logs.pop("loss"), sample_weight=shards.leading_dim(x))
        logs["rho"] = rho
        for tracker in self._sam_trackers:
            tracker.update_state(logs[tracker.name])
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def test_step(self, data):
        """The wrapped model's evaluation; the SAM diagnostics are training-only."""
        return {k: v for k, v in super().test_step(data).items() if k not in SAM_LOGS}

    def _erm_update(self, weights, state, x, y, sample_weight):
        """The plain Keras step (whole batch, one pass), in the same shape as `_sam_update`."""
        grads, loss, y_pred, new_state = self._gradient(weights, state, x, y, sample_weight, training=True)
        loss, grad_norm = self._unscaled(loss), ascent.global_norm(self._unscaled(grads))
        zero, one = tf.zeros((), tf.float32), tf.ones((), tf.float32)
        logs = {"loss": loss, "sam_loss": loss, "sharpness": zero, "grad_norm": grad_norm, "eps_norm": zero,
                "grad_cosine": one, "m": tf.cast(shards.leading_dim(x), tf.float32)}
        return grads, y_pred, new_state, logs

    def _sam_update(self, weights, state, x, y, sample_weight, rho):
        """Sum over shards of |S_j|/b * (G_j, losses, norms); predictions and state from the w pass."""
        batch = shards.leading_dim(x)
        m = batch if self.m is None else self.m
        if isinstance(batch, int):
            if m > batch:
                raise ValueError(
                    f"m={m} is larger than the per-replica batch size {batch}; use m <= {batch} "
                    "(or m=None for one shard per batch), or a larger batch_size."
                )
            if batch % m:  # e.g. the last batch of NumPy input
                warnings.warn(
                    f"m={m} does not divide the per-replica batch of {batch}: the last shard has "
                    f"{batch % m} examples (weighted by its size).",
                    stacklevel=2,
                )
        else:  # a short last batch, seen only at run time: one shard if it is smaller than m
            m = tf.minimum(m, batch)
        full = (batch // m) * m

        def weighted(summed, size):  # sum over shards of |S_j| / b * (...), all shards of one size
            return tree.map_structure(lambda t: t * tf.cast(size / batch, t.dtype), summed)

        def shard_fn(shard, shard_state):
            return self._shard_update(weights, shard_state, *shard, rho)

        kinds = self._state_kinds()
        data = (x, y, sample_weight)
        stacked = shards.stack_shards(shards.slice_batch(data, 0, full), full // m, m)
        per_pass = self._shards_per_pass(full // m, weights)
        summed, y_pred, state = shards.map_shards(shard_fn, stacked, state, kinds, per_pass, MAX_UNROLLED_SHARDS)
        summed, y_pred = weighted(summed, m), shards.unstack_shards(y_pred)

        def with_remainder():
            rest = shards.slice_batch(data, full)
            r_sum, r_pred, r_state = self._shard_update(weights, state, *rest, rho)
            return (
                tree.map_structure(tf.add, summed, weighted(r_sum, batch - full)),
                tree.map_structure(lambda a, b: tf.concat([a, b], 0), y_pred, r_pred),
                shards.merge_state(state, kinds, [s[None] for s in r_state]),
            )

        if isinstance(batch, int):
            if full < batch:
                summed, y_pred, state = with_remainder()
        else:
            summed, y_pred, state = tf.cond(full < batch, with_remainder, lambda: (summed, y_pred, state))
        grads, erm_grads = summed.pop("grads"), summed.pop("erm_grads")
        summed["sharpness"] = summed["sam_loss"] - summed["loss"]
        summed["grad_cosine"] = _cosine(erm_grads, grads)
        summed["m"] = tf.cast(m, tf.float32)
        return grads, y_pred, state, summed

    def _shard_update(self, weights, state, x, y, sample_weight, rho):
        """One shard: ascent from w to w + eps, gradient there (the caller weights by |S_j| / b)."""
        frozen = self.bn_in_ascent == "frozen"
        g, loss, y_pred, new_state = self._gradient(weights, state, x, y, sample_weight, training=not frozen)
        if frozen:  # BN statistics and logged predictions come from a training-mode pass at w
            loss, y_pred, new_state = self._forward(weights, state, x, y, sample_weight, training=True)
        erm_grads = self._unscaled(g)
        g = self._mask(erm_grads)
        grad_norm = ascent.global_norm(g)
        delta = self._ascent(weights, state, x, y, sample_weight, rho, g, grad_norm)
        sam_grads, sam_loss, _, _ = self._gradient(self._add(weights, delta), state, x, y, sample_weight, training=True)
        summed = {
            "grads": sam_grads,
            "erm_grads": erm_grads,
            "loss": self._unscaled(loss),
            "sam_loss": self._unscaled(sam_loss),
            "grad_norm": grad_norm,
            "eps_norm": ascent.global_norm(delta),
        }
        return summed, y_pred, new_state

    def _ascent(self, weights, state, x, y, sample_weight, rho, g, grad_norm):
        """eps of one shard from its (unscaled, masked) gradient g at w: `ascent_steps` steps."""
        training = self.bn_in_ascent != "frozen"
        scales = ascent.adaptive_scales(weights, self.adaptive, self.adaptive_eta)
        step_size = rho * self.step_mult
        delta = ascent.ascent_step(g, scales, step_size, self.normalize, norm=None if scales else grad_norm)
        for _ in range(1, self.ascent_steps):
            if self.normalize:
                delta = ascent.project_to_ball(delta, scales, rho)
            g_step, *_ = self._gradient(self._add(weights, delta), state, x, y, sample_weight, training=training)
            g = self._mask(self._unscaled(g_step))
            delta = [d + e for d, e in zip(delta, ascent.ascent_step(g, scales, step_size, self.normalize))]
        if self.normalize and (self.ascent_steps > 1 or self.step_mult > 1):  # else already inside the ball
            delta = ascent.project_to_ball(delta, scales, rho)
        return delta

    def shard_perturbations(self, x, y=None, sample_weight=None, max_shards=None):
        """eps_j of the first `max_shards` shards of the batch (x, y) at the current weights and rho,
        as the train step computes them (a list over shards of lists over `inner.trainable_variables`).
        For inspection (e.g. `keras_msam.tensorboard.EpsHistograms`), run eagerly."""
        batch = shards.leading_dim(x)
        m = batch if self.m is None else min(self.m, int(batch))
        weights = [v.value for v in self.inner.trainable_variables]
        state = [v.value for v in self.inner.non_trainable_variables]
        result = []
        for start in list(range(0, int(batch), m))[:max_shards]:
            xs, ys, ws = shards.slice_batch((x, y, sample_weight), start, start + m)
            g, *_ = self._gradient(weights, state, xs, ys, ws, training=self.bn_in_ascent != "frozen")
            g = self._mask(self._unscaled(g))
            result.append(self._ascent(weights, state, xs, ys, ws, self.current_rho(), g, ascent.global_norm(g)))
        return result

    # ----------------------------------------------------------------- helpers
    def _forward(self, weights, state, x, y, sample_weight, training):
        """Loss (scaled for distribution and loss scaling), predictions and new state at `weights`."""
        kwargs = {"training": training} if self.inner._call_has_training_arg else {}
        y_pred, new_state, losses = self.inner.stateless_call(weights, state, x, return_losses=True, **kwargs)
        self._losses_override = list(losses)
        try:
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
        finally:
            self._losses_override = []
        return self.optimizer.scale_loss(loss), y_pred, new_state

    def _gradient(self, weights, state, x, y, sample_weight, training):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            loss, y_pred, new_state = self._forward(weights, state, x, y, sample_weight, training)
        grads = tape.gradient(loss, weights)
        grads = [tf.zeros_like(w) if g is None else tf.convert_to_tensor(g) for g, w in zip(grads, weights)]
        return grads, loss, y_pred, new_state

    def _unscaled(self, value):
        """Undoes the mixed-precision loss scale and the 1/replicas scaling of Keras losses."""
        if isinstance(value, (list, tuple)):
            return [self._unscaled(v) for v in value]
        value = tf.cast(value, tf.float32)
        scale = getattr(self.optimizer, "dynamic_scale", None)
        if scale is not None:
            value = value / tf.cast(scale, tf.float32)
        return loss_module.unscale_loss_for_distribution(value)

    def _mask(self, grads):
        if not self.exclude:
            return grads
        patterns = [re.compile(p) for p in self.exclude]
        return [
            tf.zeros_like(g) if any(p.search(v.path) for p in patterns) else g
            for g, v in zip(grads, self.inner.trainable_variables)
        ]

    def _shards_per_pass(self, num_shards, weights):
        """The shards per vectorized pass for k shards (see the `shards_per_pass` argument)."""
        if self.shards_per_pass != "auto":
            return self.shards_per_pass
        if not isinstance(num_shards, int):
            return None
        # per vectorized shard: weights + eps, g and G (float32) -> about 4 copies of the weights
        return auto_shards_per_pass(num_shards, 4 * 4 * sum(w.shape.num_elements() for w in weights))

    @staticmethod
    def _add(weights, delta):
        return [w + tf.cast(d, w.dtype) for w, d in zip(weights, delta)]

    def _state_kinds(self):
        """How each non-trainable variable merges across shards (see `shards.merge_state`)."""
        momentum = {}
        for layer in self.inner._flatten_layers(include_self=True):
            if isinstance(layer, keras.layers.BatchNormalization):
                for v in (layer.moving_mean, layer.moving_variance):
                    momentum[id(v)] = layer.momentum
        kinds = []
        for v in self.inner.non_trainable_variables:
            if id(v) in momentum:
                kinds.append((shards.EMA, momentum[id(v)]))
            elif v.path.endswith("seed_generator_state"):
                kinds.append((shards.SEED, None))
            else:
                kinds.append((shards.LAST, None))
        return kinds
