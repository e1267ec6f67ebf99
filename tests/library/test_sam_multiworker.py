"""SAMModel under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 (free ports, bounded
time) end with identical weights, equal to one process training on the same global batches, and with
identical BatchNorm moving statistics, equal to MirroredStrategy's over two devices in one process."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_msam import SAMModel
from multiworker_worker import EPOCHS, GLOBAL_BATCH, M, RHO, bn_mlp, moving_statistics
from cluster import TESTS, run_workers
from sam_fixtures import LR, data, mlp


@pytest.mark.slow
def test_two_workers_train_like_one_process(tmp_path):
    results = run_workers(tmp_path, lambda i: [os.path.join(TESTS, "multiworker_worker.py"), str(tmp_path / f"w{i}.npz")])
    for code, output in results:
        assert code == 0, output[-3000:]
    saved = [np.load(tmp_path / f"w{i}.npz") for i in range(2)]
    workers = [[s[f"arr_{j}"] for j in range(4)] for s in saved]

    x, y, _ = data(n=16)
    single = SAMModel(mlp(0.01), rho=RHO, m=M)
    single.compile(optimizer=keras.optimizers.SGD(LR, momentum=0.9), loss="mse")
    initial = [v.numpy() for v in single.inner.trainable_variables]
    history = single.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0).history
    expected = [v.numpy() for v in single.inner.trainable_variables]

    assert max(np.max(np.abs(a - b)) for a, b in zip(expected, initial)) > 1e-2
    for a, b, want in zip(*workers, expected):
        np.testing.assert_array_equal(a, b)  # the workers agree exactly
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(saved[0]["loss"], history["loss"], rtol=1e-5)
    np.testing.assert_allclose(saved[0]["eps_norm"], [RHO] * EPOCHS, rtol=1e-5)
    assert np.isfinite(saved[0]["eval_loss"])

    # BatchNorm statistics: the workers hold the same, as MirroredStrategy's two replicas in one process
    # (each replica gets the same half of every global batch as the worker of its index)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"], cross_device_ops=tf.distribute.ReductionToOneDevice())
    with strategy.scope():
        mirrored = SAMModel(bn_mlp(), rho=RHO, m=M)
        mirrored.compile(optimizer=keras.optimizers.SGD(LR), loss="mse")
    mirrored.fit(x, y, batch_size=GLOBAL_BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
    for key, want in zip(("bn_mean", "bn_variance"), moving_statistics(mirrored)):
        np.testing.assert_array_equal(saved[0][key], saved[1][key])
        np.testing.assert_allclose(saved[0][key], want, rtol=1e-5, atol=1e-6)
        assert np.max(np.abs(want - (0.0 if key == "bn_mean" else 1.0))) > 1e-2  # the statistics moved
