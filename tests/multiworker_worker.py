"""One worker of the MultiWorkerMirroredStrategy test (run as a script by test_sam_multiworker.py).

Usage: TF_CONFIG=... python multiworker_worker.py OUT.npz
Trains SAMModel(mlp, m=2) on 16 examples, global batch 8 (4 per worker), 2 epochs, evaluates, and saves
the final weights and the logs to OUT.npz; then the same for `bn_mlp` (BatchNorm), saving its moving
statistics.
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_msam import SAMModel  # noqa: E402
from sam_fixtures import LR, data, mlp  # noqa: E402

GLOBAL_BATCH, M, RHO, EPOCHS = 8, 2, 0.1, 2


def bn_mlp():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4), keras.layers.BatchNormalization(momentum=0.5),
                             keras.layers.Dense(2)])


def moving_statistics(model):
    return [v.numpy() for v in model.inner.non_trainable_variables if "moving" in v.path]


def main(out):
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    x, y, _ = data(n=16)

    def dataset_fn(context):
        """Worker i gets examples [4 i, 4 i + 4) of every global batch of 8: a fixed split."""
        per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
        start = context.input_pipeline_id * per_replica
        rows = [g + start + j for g in range(0, len(x), GLOBAL_BATCH) for j in range(per_replica)]
        return tf.data.Dataset.from_tensor_slices((x[rows], y[rows])).batch(per_replica)

    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    with strategy.scope():
        model = SAMModel(mlp(0.01), rho=RHO, m=M)
        model.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
    history = model.fit(dataset, epochs=EPOCHS, steps_per_epoch=len(x) // GLOBAL_BATCH, verbose=0).history
    evaluation = model.evaluate(dataset, steps=len(x) // GLOBAL_BATCH, verbose=0, return_dict=True)
    with strategy.scope():
        bn_model = SAMModel(bn_mlp(), rho=RHO, m=M)
        bn_model.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    bn_model.fit(dataset, epochs=EPOCHS, steps_per_epoch=len(x) // GLOBAL_BATCH, verbose=0)
    bn_mean, bn_variance = moving_statistics(bn_model)
    np.savez(out, *[v.numpy() for v in model.inner.trainable_variables],
             loss=np.array(history["loss"]), eps_norm=np.array(history["eps_norm"]),
             eval_loss=np.array(evaluation["loss"]), bn_mean=bn_mean, bn_variance=bn_variance)


if __name__ == "__main__":
    main(sys.argv[1])
