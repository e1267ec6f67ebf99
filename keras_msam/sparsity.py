"""Feature sparsity and Jacobian rank: the two measures of "SGD with large step sizes learns sparse features".

Feature sparsity of a layer. phi = its (ReLU) activations over n examples, an n x D matrix (a conv
feature map is flattened, each (position, channel) being one unit):

- raw: the fraction of positive entries of phi;
- de-duplicated (default): rows of phi L2-normalised; always-zero columns dropped; then, going through
  the columns in order, a column is dropped when its |Pearson correlation| with an already kept column
  exceeds `threshold` (0.99; 0.95 for deep nets, after subsampling to `max_units` = 1000 units);
  sparsity = (number of non-zero entries in the kept columns) / (n * D), D counting all the columns
  (dead and duplicated units included). A constant column has no Pearson correlation; constant
  columns count as duplicates of one another (they are parallel) and of no other column.

Jacobian rank: the rows of J are the per-example gradients of the scalar output w.r.t. all trainable
parameters (the NTK features), rank = #{sigma_i / sigma_1 > rel_tol}, rel_tol = 1e-4. J is computed
with one vectorized `tf.GradientTape.jacobian` per variable, which suits small nets (thousands of
parameters); a ResNet has far too many parameters for it.

The pure functions `sparsity_of_activations` and `rank_of` work on NumPy arrays; `feature_sparsity`,
`jacobian_matrix` and `jacobian_rank` extract those arrays from a Keras model; `SparsityLogger` logs
both measures to TensorBoard during `fit`.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "SparsityLogger",
    "activations",
    "feature_sparsity",
    "jacobian_matrix",
    "jacobian_rank",
    "rank_of",
    "sparsity_of_activations",
]


# ---------------------------------------------------------------------------------------------- arrays


def _as_matrix(phi, name="phi"):
    phi = np.asarray(phi, dtype=np.float64)
    if phi.ndim < 2 or phi.shape[0] == 0:
        raise ValueError(f"{name} must be an (n, D) array of activations with n >= 1; got shape {phi.shape}.")
    return phi.reshape(phi.shape[0], -1)


def _check_threshold(threshold):
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be a correlation level in (0, 1] (0.99 in the paper); got {threshold!r}.")


def deduplicated_columns(phi, threshold=0.99):
    """Indices of the columns of `phi` kept by the de-duplication (after row normalisation)."""
    _check_threshold(threshold)
    phi = _as_matrix(phi)
    norms = np.linalg.norm(phi, axis=1, keepdims=True)
    phi = phi / np.where(norms > 0, norms, 1.0)
    alive = np.flatnonzero(np.any(phi != 0, axis=0))
    if alive.size == 0:
        return alive
    cols = phi[:, alive]
    centred = cols - cols.mean(axis=0)
    scale = np.linalg.norm(centred, axis=0)
    constant = scale <= 1e-12 * np.maximum(np.abs(cols).max(axis=0), 1e-300)
    unit = centred / np.where(constant, 1.0, scale)
    corr = np.abs(unit.T @ unit)
    corr[constant, :] = 0.0
    corr[:, constant] = 0.0
    corr[np.ix_(constant, constant)] = 1.0  # parallel constant columns: duplicates of each other
    kept = []
    for j in range(alive.size):
        if not kept or corr[j, kept].max() <= threshold:
            kept.append(j)
    return alive[np.asarray(kept, dtype=int)]


def sparsity_of_activations(phi, threshold=0.99, raw=False):
    """Feature sparsity of an (n, D) activation matrix (see the module doc); lower is sparser."""
    phi = _as_matrix(phi)
    if raw:
        return float(np.mean(phi > 0))
    kept = deduplicated_columns(phi, threshold)
    return float(np.count_nonzero(phi[:, kept])) / phi.size


def rank_of(jacobian, rel_tol=1e-4):
    """#{sigma_i / sigma_1 > rel_tol} for the singular values sigma_1 >= sigma_2 >= ... of `jacobian`."""
    if not 0 <= rel_tol < 1:
        raise ValueError(f"rel_tol must be in [0, 1) (1e-4 in the paper); got rel_tol={rel_tol!r}.")
    jacobian = _as_matrix(jacobian, "jacobian")
    sigma = np.linalg.svd(jacobian, compute_uv=False)
    if sigma.size == 0 or sigma[0] == 0:
        return 0
    return int(np.count_nonzero(sigma / sigma[0] > rel_tol))


# ----------------------------------------------------------------------------------------- from models


def _inner(model):
    """The wrapped model of a `SAMModel` (whose `call` is the inner model's), else the model itself."""
    from keras_msam.sam_model import SAMModel

    return model.inner if isinstance(model, SAMModel) else model


def _inputs(data):
    if isinstance(data, (tuple, list)) and len(data) in (2, 3) and not np.isscalar(data[0]):
        data = data[0]  # (x, y[, sample_weight])
    return data


def _layer_model(model, layer):
    model = _inner(model)
    if callable(layer) and not isinstance(layer, keras.layers.Layer):
        return layer
    if isinstance(layer, keras.layers.Layer):
        target = layer
    elif isinstance(layer, int):
        target = model.layers[layer]
    elif isinstance(layer, str):
        try:
            target = model.get_layer(layer)
        except ValueError:
            names = [sub.name for sub in model.layers]
            raise ValueError(f"layer={layer!r} is not a layer of {model.name!r}; its layers are {names}.") from None
    else:
        raise TypeError(
            f"layer must be a layer name, an index into model.layers, a Layer, or a callable x -> activations; "
            f"got {type(layer).__name__}."
        )
    try:
        return keras.Model(model.inputs, target.output)
    except (AttributeError, ValueError) as error:
        raise ValueError(
            f"cannot read the output of layer {target.name!r} from {model.name!r} ({error}). Build the model "
            f"functionally (or call a Sequential on data first), or pass layer=a callable x -> activations."
        ) from None


def _predictor(sub_model, batch_size=1024):
    return lambda x: sub_model.predict(x, batch_size=batch_size, verbose=0)


def activations(model, layer, data, batch_size=1024):
    """The (n, D) activations of `layer` (name, index, Layer or callable x -> activations) over `data`."""
    extract = _layer_model(model, layer)
    x = _inputs(data)
    if isinstance(extract, keras.Model):
        phi = extract.predict(x, batch_size=batch_size, verbose=0)
    else:
        phi = keras.ops.convert_to_numpy(extract(x))
    return _as_matrix(phi)


def feature_sparsity(model, layer, data, threshold=0.99, raw=False, max_units=None, seed=0):
    """Feature sparsity of `layer`'s activations over the inputs of `data` (lower is sparser).

    Args:
        model: a Keras model (a `SAMModel` is measured through its wrapped model).
        layer: a layer name, an index into `model.layers`, a Layer, or a callable x -> activations.
        data: inputs x, or (x, y) whose x is used.
        threshold: |Pearson correlation| above which a column duplicates a kept one (0.99; 0.95 for deep nets).
        raw: the fraction of positive activations instead.
        max_units: use a random subset of this many units (1000 for deep nets); None uses all of them.
        seed: the seed of that subset.
    """
    phi = activations(model, layer, data)
    if max_units is not None and phi.shape[1] > max_units:
        units = np.random.default_rng(seed).choice(phi.shape[1], size=max_units, replace=False)
        phi = phi[:, np.sort(units)]
    return sparsity_of_activations(phi, threshold=threshold, raw=raw)


def jacobian_matrix(model, data, batch_size=256):
    """(n, P): row i is the gradient of the scalar output on example i w.r.t. all trainable parameters."""
    model = _inner(model)
    x = np.asarray(_inputs(data))
    if not model.trainable_variables:
        raise ValueError(f"model {model.name!r} has no trainable variables; build it (call it on data) first.")
    outputs = int(np.prod(keras.ops.shape(model(x[:1], training=False))[1:]))
    if outputs != 1:
        raise ValueError(
            f"jacobian_rank needs a model with one scalar output per example; {model.name!r} outputs {outputs} "
            f"values per example (pass a model of one of them, e.g. keras.Model(inputs, outputs[:, :1]))."
        )
    function = _JACOBIANS.get(model)
    if function is None:  # one traced function per model, reused by every later call (e.g. a callback)
        function = _JACOBIANS[model] = _jacobian_function(model)
    rows = [function(tf.convert_to_tensor(x[start : start + batch_size])) for start in range(0, len(x), batch_size)]
    return np.concatenate([row.numpy() for row in rows], axis=0).astype(np.float64)


_JACOBIANS = weakref.WeakKeyDictionary()


def _jacobian_function(model):
    variables = [v.value if hasattr(v, "value") else v for v in model.trainable_variables]
    model_ref = weakref.ref(model)  # no strong reference: the cache entry dies with the model

    @tf.function(reduce_retracing=True)
    def jacobian(x):
        n = tf.shape(x)[0]
        with tf.GradientTape() as tape:
            out = tf.reshape(tf.convert_to_tensor(model_ref()(x, training=False)), [n])
        blocks = tape.jacobian(out, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
        return tf.concat([tf.reshape(block, [n, -1]) for block in blocks], axis=1)

    return jacobian


def jacobian_rank(model, data, rel_tol=1e-4):
    """Rank of the Jacobian (NTK feature) matrix of `model` over the inputs of `data`."""
    return rank_of(jacobian_matrix(model, data), rel_tol)


# -------------------------------------------------------------------------------------------- callback


class SparsityLogger(keras.callbacks.Callback):
    """Logs feature sparsity (de-duplicated and raw) and the Jacobian rank to TensorBoard every N steps.

    Scalars `sparsity/feature`, `sparsity/raw` and `sparsity/jacobian_rank` are written under `log_dir`
    at optimizer step 0 and every `every_n_steps` steps (with `steps_per_execution` > 1, at the first
    batch end past each multiple); the values are also kept in `history`, a list of dicts.

    Args:
        data: inputs (or (x, y)) on which to measure, e.g. the training set.
        layer: the layer whose features are measured (see `feature_sparsity`).
        every_n_steps: measure every this many optimizer steps.
        log_dir: TensorBoard directory; None keeps the values in `history` only.
        threshold, max_units: as in `feature_sparsity`.
        rank: also compute the Jacobian rank (only for small nets).
    """

    def __init__(self, data, layer, every_n_steps, log_dir=None, threshold=0.99, max_units=None, rank=True):
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int; got every_n_steps={every_n_steps!r}.")
        self.data, self.layer, self.every_n_steps = data, layer, every_n_steps
        self.log_dir, self.threshold, self.max_units, self.rank = log_dir, threshold, max_units, rank
        self.history = []
        self._writer = None
        self._extract = None
        self._next = 0

    def on_train_begin(self, logs=None):
        if self.log_dir is not None and self._writer is None:
            self._writer = tf.summary.create_file_writer(str(self.log_dir))
        self._next = self._step()
        self._maybe_log()

    def on_train_batch_end(self, batch, logs=None):
        self._maybe_log()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.flush()

    def _step(self):
        return int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _maybe_log(self):
        step = self._step()
        if step < self._next:
            return
        self._next = (step // self.every_n_steps + 1) * self.every_n_steps
        self.history.append(self.measure(step))

    def measure(self, step):
        """Measures now; `step` labels the values (and the TensorBoard points)."""
        if self._extract is None:  # one sub-model for the whole run, not one per measurement
            sub_model = _layer_model(self.model, self.layer)
            self._extract = sub_model if not isinstance(sub_model, keras.Model) else _predictor(sub_model)
        kwargs = dict(threshold=self.threshold, max_units=self.max_units)
        values = {
            "step": step,
            "feature": feature_sparsity(self.model, self._extract, self.data, **kwargs),
            "raw": feature_sparsity(self.model, self._extract, self.data, raw=True, **kwargs),
        }
        if self.rank:
            values["jacobian_rank"] = jacobian_rank(self.model, self.data)
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in values.items():
                    if name != "step":
                        tf.summary.scalar(f"sparsity/{name}", value, step=step)
        return values
