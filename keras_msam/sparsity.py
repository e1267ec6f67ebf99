"""Feature sparsity and Jacobian rank: the two measures of "SGD with large step sizes learns sparse features".

Feature sparsity (SS) of a layer, as the papers' code computes it (`fc_nets.py::feature_sparsity`,
`deep_nets/utils_eval.py::compute_feature_sparsity`). phi = the layer's (ReLU) activations over N
examples, an N x D matrix (a conv feature map is flattened: each (position, channel) is one unit).

1. Row normalisation (fully connected nets; `row_normalize=False` for deep nets): each row divided
   by its L2 norm, an all-zero row left at 0.
2. Subsampling (deep nets, `max_units` = 1000): when D > max_units, max_units columns drawn without
   replacement, in the drawn order (`np.random.RandomState(seed).choice`, the papers' legacy draw).
3. Alive columns: those with an entry > 0. Dead columns are not de-duplicated but stay in D.
4. De-duplication, greedy keep-last: going through the alive columns in order, a column is dropped
   when its |Pearson correlation| with ANY column still present (a kept earlier one or any later one)
   exceeds `threshold` (0.99 two- and three-layer nets, 0.999 the 1D regression, 0.95 deep nets). So
   of a correlated group the last column survives, and of a chain A ~ B ~ C (A, C uncorrelated) only C.
   A constant column has no Pearson correlation (NaN): it is never dropped and drops nothing.
5. SS = (positive entries of phi in the kept columns) / (N * D), D after subsampling (the fully
   connected code counts non-zero entries: the same for ReLU features).

Raw sparsity: the fraction of positive entries of phi, over ALL units (before any subsampling).

Jacobian rank: the rows of J are the per-example gradients of the scalar output w.r.t. all trainable
parameters (the NTK features), rank = #{sigma_i / sigma_1 > rel_tol}; the papers use rel_tol = 1e-4
and as many evaluation points as parameters (300 uniform points for the 1D regression, X_test[:P]
for the teacher-student nets), and for diagonal nets the closed form J = [X * u, X * v] with
rel_tol = 1e-15 (`rank_of` on that matrix). J is computed with one vectorized
`tf.GradientTape.jacobian` per variable, which suits small nets (thousands of parameters).

The pure functions `sparsity_of_activations`, `deduplicated_columns` and `rank_of` work on NumPy
arrays; `feature_sparsity`, `layer_sparsities` (several layers of a deep net in one pass, without
holding all the activations), `jacobian_matrix` and `jacobian_rank` take a Keras model;
`SparsityLogger` records them during `fit`.
"""

import weakref

import keras
import numpy as np
import tensorflow as tf

__all__ = [
    "SparsityLogger",
    "activations",
    "deduplicated_columns",
    "feature_sparsity",
    "layer_sparsities",
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


def _normalize_rows(phi):
    norms = np.linalg.norm(phi, axis=1, keepdims=True)
    return phi / np.where(norms > 0, norms, 1.0)


def deduplicated_columns(phi, threshold=0.99, row_normalize=True):
    """Indices of the columns of `phi` that the de-duplication keeps (steps 1, 3 and 4 of the module doc)."""
    _check_threshold(threshold)
    phi = _as_matrix(phi)
    if row_normalize:
        phi = _normalize_rows(phi)
    alive = np.flatnonzero((phi > 0).sum(axis=0) > 0)
    if alive.size < 2:
        return alive
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = np.corrcoef(phi[:, alive].T)  # NaN rows and columns for constant columns
    np.fill_diagonal(corr, 0.0)
    above = np.abs(corr) > threshold  # NaN compares False
    present = np.ones(alive.size, dtype=bool)
    for j in range(alive.size):
        present[j] = False
        present[j] = not above[j, present].any()  # against the kept earlier and all the later columns
    return alive[present]


def _subsample(phi, max_units, seed):
    """phi's columns, or `max_units` of them drawn without replacement, in the drawn order."""
    if max_units is None or phi.shape[1] <= max_units:
        return phi
    return phi[:, np.random.RandomState(seed).choice(phi.shape[1], max_units, replace=False)]


def sparsity_of_activations(phi, threshold=0.99, raw=False, row_normalize=True, max_units=None, seed=0):
    """Feature sparsity of an (N, D) activation matrix (see the module doc); lower is sparser.

    `raw=True`: the fraction of positive entries over all D units (`max_units` is then not used).
    """
    phi = _as_matrix(phi)
    if raw:
        return float(np.mean(phi > 0))
    phi = _subsample(phi, max_units, seed)
    kept = deduplicated_columns(phi, threshold, row_normalize)
    return float(np.count_nonzero(phi[:, kept] > 0)) / phi.size


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


def feature_sparsity(model, layer, data, threshold=0.99, raw=False, max_units=None, seed=0, row_normalize=True):
    """Feature sparsity of `layer`'s activations over the inputs of `data` (lower is sparser).

    Args:
        model: a Keras model (a `SAMModel` is measured through its wrapped model).
        layer: a layer name, an index into `model.layers`, a Layer, or a callable x -> activations.
        data: inputs x, or (x, y) whose x is used.
        threshold: |Pearson correlation| above which a column is a duplicate (0.99; 0.999 for the 1D
            regression; 0.95 for deep nets).
        raw: the fraction of positive activations over all units instead.
        max_units: de-duplicate a random subset of this many units (1000 for deep nets); None: all.
        seed: the seed of that subset (`np.random.RandomState(seed).choice`, unsorted).
        row_normalize: normalise each example's activations first (fully connected nets: True; deep
            nets: False).
    """
    phi = activations(model, layer, data)
    return sparsity_of_activations(phi, threshold=threshold, raw=raw, row_normalize=row_normalize,
                                   max_units=max_units, seed=seed)


def _batches(data, batch_size):
    """Input batches of `data`: an array (or (x, y)), cut into `batch_size` rows, or an iterable of batches."""
    x = _inputs(data)
    if isinstance(x, (np.ndarray, tf.Tensor)) or hasattr(x, "__array__"):
        x = np.asarray(x)
        return (x[start : start + batch_size] for start in range(0, len(x), batch_size))
    return (_inputs(batch) for batch in x)


def layer_sparsities(model, layers, data, threshold=0.95, max_units=1000, seed=0, row_normalize=False,
                     batch_size=512):
    """Raw and de-duplicated feature sparsity of several layers, in one pass over `data`.

    The papers' deep-net measure (`deep_nets/utils_eval.py::compute_feature_sparsity`, blocks 1-5 of a
    ResNet): raw = fraction of positive activations over all units; "feature" = the de-duplicated
    sparsity (module doc) of `max_units` units drawn at random (the draws of one
    `np.random.RandomState(seed)`, one layer after the other), without row normalisation. Only the
    drawn units of each batch leave the device, so a layer of 65536 units over 10752 images is fine.

    Args:
        model: a Keras model built functionally (or a `SAMModel` around one).
        layers: layer names, indices into `model.layers` or Layers.
        data: inputs x (array), (x, y), or an iterable of input batches (e.g. a `tf.data.Dataset`).
        threshold, max_units, seed, row_normalize: as in `feature_sparsity` (deep-net defaults).
        batch_size: examples per forward pass when `data` is an array.

    Returns:
        {layer name: {"raw": ..., "feature": ...}}.
    """
    _check_threshold(threshold)
    inner = _inner(model)
    targets = [_layer_model(inner, layer) for layer in layers]
    if not all(isinstance(t, keras.Model) for t in targets):
        raise ValueError("layer_sparsities needs layers of the model (names, indices or Layers), not callables.")
    names = [t.layers[-1].name if not isinstance(layer, str) else layer for t, layer in zip(targets, layers)]
    inputs = inner.inputs[0] if len(inner.inputs) == 1 else inner.inputs
    extract = keras.Model(inputs, [t.outputs[0] for t in targets])
    sizes = [int(np.prod(out.shape[1:])) for out in extract.outputs]
    rng = np.random.RandomState(seed)
    picks = [np.arange(size) if max_units is None or size <= max_units
             else rng.choice(size, max_units, replace=False) for size in sizes]

    @tf.function(reduce_retracing=True)
    def summarize(x):
        outputs = extract(x, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        results = []
        for out, pick in zip(outputs, picks):
            flat = tf.reshape(out, [tf.shape(out)[0], -1])
            positive = tf.reduce_sum(tf.cast(flat > 0, tf.int64))
            sq_norms = tf.reduce_sum(tf.square(tf.cast(flat, tf.float64)), axis=1)
            results.append((positive, sq_norms, tf.gather(flat, pick, axis=1)))
        return results

    positives, norms, picked = np.zeros(len(sizes), dtype=np.int64), [[] for _ in sizes], [[] for _ in sizes]
    examples = 0
    for x in _batches(data, batch_size):
        for k, (positive, sq_norms, columns) in enumerate(summarize(tf.convert_to_tensor(x))):
            positives[k] += int(positive)
            norms[k].append(np.sqrt(sq_norms.numpy()))
            picked[k].append(columns.numpy())
        examples += int(np.shape(x)[0])
    if examples == 0:
        raise ValueError("layer_sparsities got no examples in data.")
    results = {}
    for k, name in enumerate(names):
        phi = np.concatenate(picked[k]).astype(np.float64)
        if row_normalize:  # by the norm of each example's full activation vector, as before subsampling
            row_norms = np.concatenate(norms[k])[:, None]
            phi = phi / np.where(row_norms > 0, row_norms, 1.0)
        kept = deduplicated_columns(phi, threshold, row_normalize=False)
        results[name] = {"raw": positives[k] / (examples * sizes[k]),
                         "feature": float(np.count_nonzero(phi[:, kept] > 0)) / phi.size}
    return results


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
    """Records feature sparsity (and the Jacobian rank, and any other scalars) every N optimizer steps of `fit`.

    Measures at optimizer step 0 (the start of `fit`) and every `every_n_steps` steps (with
    `steps_per_execution` > 1, at the first batch end past each multiple); each measurement is a dict
    in `history` and, with `log_dir`, TensorBoard scalars `sparsity/<key>` at that step.

    Keys: one layer (`layer` a name, index, Layer or callable): "feature", "raw" (`feature_sparsity`);
    several (`layer` a list or tuple): "feature/<name>", "raw/<name>" (`layer_sparsities`, one pass);
    "jacobian_rank" with `rank=True` (on `rank_data`, default `data`); and whatever `extra(model)` returns.

    Args:
        data: inputs (or (x, y), or an iterable of batches for several layers) to measure on.
        layer: the layer(s) whose features are measured.
        every_n_steps: measure every this many optimizer steps.
        log_dir: TensorBoard directory; None keeps the values in `history` only.
        threshold, max_units, row_normalize: as in `feature_sparsity` (fully connected nets: 0.99, None,
            True; the papers' deep nets: 0.95, 1000, False).
        rank: also compute the Jacobian rank (small nets only).
        rank_data: the points of the Jacobian (the papers: as many test points as parameters).
        seed: measurement k subsamples units with seed + k: a new subset each time, as the papers draw.
        extra: `extra(model) -> dict` of more scalars to record (e.g. train and test losses).
    """

    def __init__(self, data, layer, every_n_steps, log_dir=None, threshold=0.99, max_units=None, rank=True,
                 rank_data=None, row_normalize=True, seed=0, extra=None):
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive int; got every_n_steps={every_n_steps!r}.")
        _check_threshold(threshold)
        self.data, self.layer, self.every_n_steps = data, layer, every_n_steps
        self.log_dir, self.threshold, self.max_units, self.rank = log_dir, threshold, max_units, rank
        self.rank_data = data if rank_data is None else rank_data
        self.row_normalize, self.seed, self.extra = row_normalize, seed, extra
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
        seed = self.seed + len(self.history)
        kwargs = dict(threshold=self.threshold, max_units=self.max_units, row_normalize=self.row_normalize)
        values = {"step": step}
        if isinstance(self.layer, (list, tuple)):
            for name, measured in layer_sparsities(self.model, self.layer, self.data, seed=seed, **kwargs).items():
                values.update({f"feature/{name}": measured["feature"], f"raw/{name}": measured["raw"]})
        else:
            if self._extract is None:  # one sub-model for the whole run, not one per measurement
                sub_model = _layer_model(self.model, self.layer)
                self._extract = sub_model if not isinstance(sub_model, keras.Model) else _predictor(sub_model)
            phi = activations(self.model, self._extract, self.data)
            values["feature"] = sparsity_of_activations(phi, seed=seed, **kwargs)
            values["raw"] = sparsity_of_activations(phi, raw=True)
        if self.rank:
            values["jacobian_rank"] = jacobian_rank(self.model, self.rank_data)
        if self.extra is not None:
            values.update(self.extra(self.model))
        if self._writer is not None:
            with self._writer.as_default():
                for name, value in values.items():
                    if name != "step":
                        tf.summary.scalar(f"sparsity/{name}", value, step=step)
        return values
