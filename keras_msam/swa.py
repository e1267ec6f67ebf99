"""The papers' "SWA": an exponential moving average of the weights, kept during training.

    w_swa <- tau * w_swa + (1 - tau) * w        after every optimizer step, w_swa = w at the start

with tau = 0.999 in "Towards Understanding Sharpness-Aware Minimization" (deep_nets/train.py:176, 373;
`utils_train.moving_average`; despite the name it is not an equal-weight average). Only the trainable
weights are averaged; the BatchNorm statistics of the averaged network are recomputed before each
evaluation (`keras_msam.interpolation.recompute_bn_statistics`, the papers' `bn_update` over one
augmented pass of the training data).

`WeightEMA` is a Keras callback: add it to `fit` (for a `SAMModel` it averages the wrapped network's
weights), then `ema.assign_to(other_network, bn_data=...)` puts the averaged weights into a network of
the same architecture (e.g. `keras.models.clone_model(net)`) and recomputes its BatchNorm statistics.
`save(path)` / `load(path)` keep the averages across a resumed run.
"""

import os

import keras
import numpy as np
import tensorflow as tf

from keras_msam.interpolation import recompute_bn_statistics


def _network(model):
    return getattr(model, "inner", model)


class WeightEMA(keras.callbacks.Callback):
    """Exponential moving average of the trainable weights, updated after every training batch.

    Args:
        tau: weight of the old average (0.999: the papers'); 0 <= tau < 1.
    """

    def __init__(self, tau=0.999):
        super().__init__()
        tau = float(tau)
        if not 0.0 <= tau < 1.0:
            raise ValueError(f"tau must be in [0, 1) (the weight of the old average); got tau={tau!r}.")
        self.tau = tau
        self.updates = 0  # optimizer steps averaged so far
        self._shadow = None
        self._variables = None
        self._update_fn = None

    # ----------------------------------------------------------------- state
    def _bind(self, network):
        if self._variables is not None:
            return
        self._variables = list(network.trainable_variables)
        if self._shadow is None:
            self._shadow = [tf.Variable(tf.cast(v.value, tf.float32), trainable=False, name="ema") for v in self._variables]
        tau = self.tau

        @tf.function(autograph=False)
        def update():
            for shadow, variable in zip(self._shadow, self._variables):
                shadow.assign(tau * shadow + (1.0 - tau) * tf.cast(variable.value, tf.float32))

        self._update_fn = update

    def on_train_begin(self, logs=None):
        self._bind(_network(self.model))

    def on_train_batch_end(self, batch, logs=None):
        self._update_fn()
        self.updates += 1

    def averaged(self):
        """The averaged trainable weights as arrays, aligned with the network's `trainable_variables`."""
        if self._shadow is None:
            raise ValueError("WeightEMA has no average yet: pass it to fit (or call start(network)) first.")
        return [s.numpy() for s in self._shadow]

    def start(self, network):
        """Starts the average at the current weights of `network` (fit does this by itself)."""
        self._bind(_network(network))

    def averaged_weights(self, network):
        """A list like `network.get_weights()`: the averaged trainable weights, the network's current
        values for the rest (e.g. BatchNorm statistics, to be recomputed)."""
        network = _network(network)
        values = self.averaged()
        trainable = network.trainable_variables
        if [tuple(v.shape) for v in trainable] != [value.shape for value in values]:
            raise ValueError(f"the network's {len(trainable)} trainable variables are not the {len(values)} averaged "
                             "ones: pass the network that was trained, or a clone of it.")
        positions = {id(v): i for i, v in enumerate(trainable)}  # a clone has its own variables: by position
        return [values[positions[id(v)]].astype(v.dtype) if id(v) in positions else v.numpy() for v in network.weights]

    def assign_to(self, target, bn_data=None, batch_size=128, unbiased=True):
        """Puts the averaged weights into `target` (a network of the same architecture; its own
        non-trainable values are kept) and, with `bn_data`, recomputes its BatchNorm statistics on it
        (batch-size weighted; unbiased variances, as the papers' `bn_update`). Returns `target`."""
        target = _network(target)
        target.set_weights(self.averaged_weights(target))
        if bn_data is not None:
            recompute_bn_statistics(target, bn_data, batch_size=batch_size, unbiased=unbiased)
        return target

    # ----------------------------------------------------------------- resume
    def save(self, path):
        """Writes the averages and the update count to `path` (.npz)."""
        arrays = {f"w{i}": value for i, value in enumerate(self.averaged())}
        tmp = f"{path}.tmp.npz"
        np.savez(tmp, updates=np.int64(self.updates), **arrays)
        os.replace(tmp, path)

    def load(self, path, network):
        """Reads the averages of `save(path)` for `network` (whose variables they average)."""
        network = _network(network)
        with np.load(path) as saved:
            values = [saved[f"w{i}"] for i in range(len(saved.files) - 1)]
            updates = int(saved["updates"])
        if [tuple(v.shape) for v in network.trainable_variables] != [tuple(v.shape) for v in values]:
            raise ValueError(f"{path} holds averages of other weights than the network's; remove it to restart the average.")
        self._variables = None
        self._shadow = [tf.Variable(value.astype(np.float32), trainable=False, name="ema") for value in values]
        self._bind(network)
        self.updates = updates
