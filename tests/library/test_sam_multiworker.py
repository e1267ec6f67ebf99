"""SAMModel under MultiWorkerMirroredStrategy: two worker processes on 127.0.0.1 (free ports, bounded
time) end with identical weights, equal to one process training on the same global batches."""

import json
import os
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_msam import SAMModel
from multiworker_worker import EPOCHS, GLOBAL_BATCH, M, RHO
from sam_fixtures import LR, data, mlp

TIMEOUT_S = 300
TESTS = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # multiworker_worker.py, sam_fixtures.py


def free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def run_workers(tmp_path, script_args):
    """Starts 2 workers of a cluster on 127.0.0.1; returns their (returncode, output)."""
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}),
                   TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]))
        processes.append(subprocess.Popen([sys.executable, *script_args(index)], env=env, cwd=tmp_path,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    results = []
    try:
        for process in processes:
            output, _ = process.communicate(timeout=TIMEOUT_S)
            results.append((process.returncode, output))
    finally:
        for process in processes:
            process.kill()
    return results


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
