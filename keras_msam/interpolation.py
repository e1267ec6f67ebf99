"""Linear interpolation between two sets of weights, w(a) = (1 - a) w_a + a w_b.

At each a the model gets w(a) (all float variables, trainable or not), and with `recompute_bn=True`
the BatchNorm moving statistics are then recomputed for w(a) by one pass over `bn_data` (default: the
training data) in training mode: the moving statistics become the batch-size weighted average of the
per-batch statistics (not an exponential average dominated by the last batches), as the papers'
`bn_update` (`recompute_bn_statistics`). Interpolated statistics are meaningless for the interpolated
weights, hence the recomputation (the papers do it).

Train / test loss and error are then measured in inference mode. The model's own weights are restored
at the end. `plot_interpolation` draws the result to a PNG.
"""

import keras
import numpy as np
import tensorflow as tf


def _batches(data, batch_size):
    """A tf.data.Dataset of (x, y), or a tuple (x, y) of arrays, as an iterable of (x, y) batches."""
    if isinstance(data, tf.data.Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return tf.data.Dataset.from_tensor_slices((np.asarray(data[0]), np.asarray(data[1]))).batch(batch_size)
    raise TypeError(f"data must be a tf.data.Dataset of (x, y) batches or a tuple (x, y) of arrays; got {type(data).__name__}.")


def _batch_norms(model):
    return [layer for layer in model._flatten_layers(include_self=False) if isinstance(layer, keras.layers.BatchNormalization)]


def _elements_per_example(layer):
    """Entries of one example that a BatchNorm channel averages over (H * W for an image map)."""
    shape = (getattr(layer, "_build_shapes_dict", None) or {}).get("input_shape")
    axes = [layer.axis] if isinstance(layer.axis, int) else list(layer.axis)
    if shape is None:
        raise ValueError(f"BatchNorm layer {layer.name!r} is not built; build the model before recomputing its statistics.")
    axes = [a % len(shape) for a in axes]
    dims = [d for i, d in enumerate(shape) if i != 0 and i not in axes]
    if any(d is None for d in dims):
        raise ValueError(f"unbiased=True needs static non-batch dimensions; layer {layer.name!r} has input shape {shape}.")
    return int(np.prod(dims)) if dims else 1


def recompute_bn_statistics(model, data, batch_size=256, max_batches=None, unbiased=False):
    """Sets every BatchNorm's moving mean / variance to the batch-size weighted average of its batch
    statistics over `data`: mean = sum_b (n_b / N) mu_b, var = sum_b (n_b / N) var_b.

    As the papers' `bn_update` (PyTorch momentum n_b / (N_{b-1} + n_b) from mean 0 / variance 1):
    with `unbiased=True` each var_b is the unbiased batch variance (x K_b / (K_b - 1), K_b the entries
    per channel: n_b * H * W), PyTorch's; Keras' own updates use the biased one (the default here).
    Runs eagerly, in training mode, one pass per batch; other weights unchanged. Returns the number of
    batches used (0 when the model has no BatchNorm).
    """
    layers = _batch_norms(model)
    if not layers:
        return 0
    per_example = [_elements_per_example(layer) for layer in layers] if unbiased else [None] * len(layers)
    momenta = [layer.momentum for layer in layers]
    sums = [[np.zeros(layer.moving_mean.shape), np.zeros(layer.moving_variance.shape)] for layer in layers]
    total = count = 0
    try:
        for count, (x, _) in enumerate(_batches(data, batch_size), start=1):
            for layer in layers:  # momentum 0: the moving statistics become this batch's statistics
                layer.momentum = 0.0
                layer.moving_mean.assign(tf.zeros_like(layer.moving_mean))
                layer.moving_variance.assign(tf.ones_like(layer.moving_variance))
            model(x, training=True)
            size = int(tf.shape(x)[0])
            total += size
            for (mean_sum, var_sum), layer, elements in zip(sums, layers, per_example):
                variance = layer.moving_variance.numpy().astype(np.float64)
                if unbiased:
                    entries = size * elements
                    variance *= entries / max(entries - 1, 1)
                mean_sum += size * layer.moving_mean.numpy().astype(np.float64)
                var_sum += size * variance
            if max_batches is not None and count >= max_batches:
                break
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    if count == 0:
        raise ValueError("recompute_bn_statistics got no batches: pass non-empty data.")
    for (mean_sum, var_sum), layer in zip(sums, layers):
        layer.moving_mean.assign((mean_sum / total).astype(layer.moving_mean.dtype))
        layer.moving_variance.assign((var_sum / total).astype(layer.moving_variance.dtype))
    return count


def _stats_function(model, loss_fn):
    """A tf.function (x, y) -> (sum of losses, number wrong, count) reading the model's current weights."""
    loss_fn = loss_fn or keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)

    @tf.function(reduce_retracing=True)
    def batch_stats(x, y):
        logits = model(x, training=False)
        losses = tf.cast(loss_fn(y, logits), tf.float32)
        labels = tf.argmax(y, axis=-1) if len(y.shape) == len(logits.shape) else tf.reshape(y, [-1])
        wrong = tf.cast(tf.not_equal(tf.argmax(logits, axis=-1), tf.cast(labels, tf.int64)), tf.float32)
        if len(losses.shape) == 0:  # a loss that already reduced to the batch mean
            losses = tf.fill(tf.shape(wrong), losses)
        return tf.reduce_sum(losses), tf.reduce_sum(wrong), tf.cast(tf.size(wrong), tf.float32)

    return batch_stats


def evaluate_loss_error(model, data, loss_fn=None, batch_size=256, _stats=None):
    """(mean loss, error rate) of `model` in inference mode over `data`; sparse or one-hot targets.

    `loss_fn` is a per-example loss (reduction=None); default sparse cross-entropy on logits.
    """
    stats = _stats or _stats_function(model, loss_fn)
    total_loss = total_wrong = total = 0.0
    for x, y in _batches(data, batch_size):
        loss, wrong, size = stats(x, y)
        total_loss, total_wrong, total = total_loss + float(loss), total_wrong + float(wrong), total + float(size)
    if total == 0:
        raise ValueError("evaluate_loss_error got no examples: pass non-empty data.")
    return total_loss / total, total_wrong / total


def interpolate(
    model,
    weights_a,
    weights_b,
    alphas,
    train_data,
    test_data,
    recompute_bn=True,
    loss_fn=None,
    bn_data=None,
    batch_size=256,
    bn_max_batches=None,
    bn_unbiased=False,
):
    """Train / test loss and error along w(a) = (1 - a) weights_a + a weights_b.

    Args:
        model: the Keras model (a `SAMModel` is unwrapped to its `.inner`).
        weights_a, weights_b: lists of arrays as returned by `model.get_weights()` (same order).
        alphas: the a values (e.g. np.linspace(-1, 2, 31)); a = 0 is weights_a, a = 1 weights_b.
        train_data, test_data: tf.data.Datasets of (x, y) batches or tuples (x, y) of arrays
            (unaugmented); y sparse labels or one-hot.
        recompute_bn: recompute BatchNorm statistics at each a (see `recompute_bn_statistics`);
            False keeps the interpolated moving statistics.
        loss_fn: per-example loss (reduction=None); default sparse cross-entropy on logits.
        bn_data: the data used for the BatchNorm statistics (default: train_data).
        batch_size: batch size when data are arrays.
        bn_max_batches: cap on the batches used for the statistics (None: all).
        bn_unbiased: unbiased batch variances in the recomputed statistics (PyTorch's, the papers').

    Returns:
        dict of lists aligned with alphas: "alpha", "train_loss", "train_error", "test_loss", "test_error".
    """
    model = getattr(model, "inner", model)
    current = model.get_weights()
    if len(weights_a) != len(current) or len(weights_b) != len(current):
        raise ValueError(
            f"weights_a / weights_b must be lists like model.get_weights() ({len(current)} arrays); "
            f"got {len(weights_a)} and {len(weights_b)}."
        )
    for wa, wb, wc in zip(weights_a, weights_b, current):
        if np.shape(wa) != np.shape(wc) or np.shape(wb) != np.shape(wc):
            raise ValueError(f"weight shapes differ from the model's: {np.shape(wa)} / {np.shape(wb)} vs {np.shape(wc)}.")
    stats = _stats_function(model, loss_fn)
    results = {key: [] for key in ("alpha", "train_loss", "train_error", "test_loss", "test_error")}
    try:
        for alpha in alphas:
            alpha = float(alpha)
            mixed = [
                (1.0 - alpha) * np.asarray(wa) + alpha * np.asarray(wb)
                if np.issubdtype(np.asarray(wa).dtype, np.floating)
                else np.asarray(wa)
                for wa, wb in zip(weights_a, weights_b)
            ]
            model.set_weights([m.astype(np.asarray(c).dtype) for m, c in zip(mixed, current)])
            if recompute_bn:
                recompute_bn_statistics(model, train_data if bn_data is None else bn_data, batch_size, bn_max_batches,
                                        unbiased=bn_unbiased)
            train_loss, train_error = evaluate_loss_error(model, train_data, batch_size=batch_size, _stats=stats)
            test_loss, test_error = evaluate_loss_error(model, test_data, batch_size=batch_size, _stats=stats)
            for key, value in zip(results, (alpha, train_loss, train_error, test_loss, test_error)):
                results[key].append(value)
    finally:
        model.set_weights(current)
    return results


def interpolation_figure(results, title=None, plt=None):
    """A figure: loss (left) and error (right) on train and test along alpha. `plt`: matplotlib.pyplot
    (default: imported on the Agg backend)."""
    if plt is None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("test", "--")):
        ax_loss.plot(results["alpha"], results[f"{split}_loss"], style, marker="o", markersize=3, label=split)
        ax_err.plot(results["alpha"], results[f"{split}_error"], style, marker="o", markersize=3, label=split)
    for ax, name in ((ax_loss, "loss"), (ax_err, "error")):
        ax.axvline(0.0, color="gray", lw=0.5)
        ax.axvline(1.0, color="gray", lw=0.5)
        ax.set_xlabel("alpha  (w = (1 - alpha) w_a + alpha w_b)")
        ax.set_ylabel(name)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_interpolation(results, path, title=None):
    """Saves `interpolation_figure(results, title)` as a PNG. Returns the path."""
    fig = interpolation_figure(results, title)
    fig.savefig(path, dpi=120)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
