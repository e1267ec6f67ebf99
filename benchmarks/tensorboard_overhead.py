"""Overhead of `SAMScalars` (and, for reference, Keras' TensorBoard callback) on small SAM runs.

    python benchmarks/tensorboard_overhead.py [--steps 2000] [--repeats 3]

For the diagonal linear net (n=20, d=30, full batch, 1-SAM) and a small MLP (32-64-64-1, batch 64,
m=8) it times `fit` (compiled once beforehand, verbose=0) with no callback and with each logging
callback, and prints the median wall time per step and its ratio to the run without callbacks.
"""

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_msam import SAMModel  # noqa: E402
from keras_msam.tensorboard import SAMScalars  # noqa: E402
from recipes.tasks import diag_net  # noqa: E402


def diag_net_problem():
    x, y, *_ = diag_net.make_data()
    x, y = np.asarray(x, "float32"), np.asarray(y, "float32").reshape(-1, 1)
    return SAMModel(diag_net.make_model(x.shape[1], 0.1), rho=0.05, m=1), x, y, len(x)


def mlp_problem():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1024, 32)).astype("float32")
    y = np.tanh(x @ rng.standard_normal((32, 1))).astype("float32")
    inner = keras.Sequential(
        [keras.Input((32,)), keras.layers.Dense(64, "relu"), keras.layers.Dense(64, "relu"), keras.layers.Dense(1)]
    )
    return SAMModel(inner, rho=0.05, m=8), x, y, 64


def time_fit(model, dataset, steps, callbacks):
    start = time.perf_counter()
    model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=callbacks, verbose=0, shuffle=False)
    return (time.perf_counter() - start) / steps


def benchmark(name, problem, steps, repeats, log_root):
    model, x, y, batch = problem()
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)
    variants = {
        "none": lambda: [],
        "SAMScalars(every_n_steps=1)": lambda: [SAMScalars(os.path.join(log_root, name, "s1"), 1)],
        "SAMScalars(every_n_steps=100)": lambda: [SAMScalars(os.path.join(log_root, name, "s100"), 100)],
        "keras TensorBoard(update_freq=100)": lambda: [
            keras.callbacks.TensorBoard(os.path.join(log_root, name, "tb"), update_freq=100)
        ],
    }
    time_fit(model, dataset, 50, [])  # compile the train function
    per_step = {key: [] for key in variants}
    for _ in range(repeats):  # interleaved, so a slow phase of a shared machine hits every variant
        for key, make in variants.items():
            per_step[key].append(time_fit(model, dataset, steps, make()))
    base = statistics.median(per_step["none"])
    print(f"\n{name}: {steps} steps x {repeats} repeats (median)")
    for key, times in per_step.items():
        t = statistics.median(times)
        print(f"  {key:<36} {1e3 * t:8.3f} ms/step   ratio {t / base:5.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as log_root:
        benchmark("diag_net (1-SAM, batch 20)", diag_net_problem, args.steps, args.repeats, log_root)
        benchmark("mlp (m=8, batch 64)", mlp_problem, args.steps, args.repeats, log_root)


if __name__ == "__main__":
    main()
