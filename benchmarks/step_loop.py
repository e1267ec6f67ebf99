"""The recipes' compiled step loop (`recipes.runner.StepLoop`) against `fit` on the diagonal net.

    python benchmarks/step_loop.py [--steps 10000] [--repeats 3]

1-SAM (m = 1) on the papers' diagonal linear network (n = 20, d = 30, full batch): the wall time of
`--steps` steps after a first, compiling call, for the loop (chunks of 100 steps per compiled call,
with and without XLA) and for `fit(steps_per_execution=100)` (with and without XLA). Median of
`--repeats`.
"""

import argparse
import statistics
import time

import recipes  # noqa: F401  (TensorFlow's start-up lines hidden)
import keras
import tensorflow as tf

from keras_msam import SAMModel
from recipes import runner
from recipes.tasks import diag_net


def model_and_data():
    x, y, *_ = diag_net.make_data()
    model = SAMModel(diag_net.make_model(30, 0.1), rho=0.1, m=1, normalize=False)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=diag_net.half_squared_error)
    return model, x.astype("float32"), y.astype("float32")[:, None]


def time_loop(steps, jit_compile):
    model, x, y = model_and_data()
    loop = runner.StepLoop(model, x, y, jit_compile=jit_compile)
    loop.run(100, chunk=100)  # compile
    start = time.perf_counter()
    loop.run(steps, chunk=100)
    return time.perf_counter() - start


def time_fit(steps, jit_compile):
    model, x, y = model_and_data()
    model.compile(optimizer=model.optimizer, loss=diag_net.half_squared_error, steps_per_execution=100,
                  jit_compile=jit_compile)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(data, steps_per_epoch=100, epochs=1, verbose=0, shuffle=False)  # compile
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, timer, jit in (("StepLoop, XLA", time_loop, True), ("StepLoop, no XLA", time_loop, False),
                             ("fit(steps_per_execution=100), XLA", time_fit, True),
                             ("fit(steps_per_execution=100), no XLA", time_fit, False)):
        seconds = statistics.median(timer(args.steps, jit) for _ in range(args.repeats))
        print(f"{name:<38} {args.steps} 1-SAM steps: {seconds:6.2f} s ({1e6 * seconds / args.steps:6.1f} us/step)",
              flush=True)


if __name__ == "__main__":
    main()
