"""Training throughput (images / second) of a PreAct ResNet: ERM and m-SAM side by side in one run.

    python benchmarks/resnet_throughput.py --quick                 # ResNet-18, batch 128, ERM / m=128 / m=16
    python benchmarks/resnet_throughput.py --model tiny --ms 128 32 8 --steps 10

Every mode trains the same network (same init, weight decay 5e-4, SGD momentum 0.9) on the same
synthetic CIFAR-shaped batch; the first `--warmup` steps (tracing / compiling) are timed separately and
the reported throughput is batch / median step time over the next `--steps` steps. "ERM" is the plain
Keras model; "m-SAM m=k" is `SAMModel(model, rho=0.1, m=k)`.
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_msam import SAMModel  # noqa: E402
from keras_msam.models import REGISTRY, get_model  # noqa: E402


def measure(model, x, y, warmup, steps, jit):
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit,
    )
    start = time.perf_counter()
    for _ in range(warmup):
        model.train_on_batch(x, y)
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        logs = model.train_on_batch(x, y, return_dict=True)
        times.append(time.perf_counter() - start)
    if not np.isfinite(logs["loss"]):
        raise FloatingPointError(f"non-finite loss {logs['loss']} while benchmarking")
    return statistics.median(times), first


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", choices=sorted(REGISTRY))
    parser.add_argument("--norm", default="batch", choices=("batch", "group"))
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--ms", type=int, nargs="+", default=[128, 16], help="m values of the m-SAM modes")
    parser.add_argument("--rho", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per mode (median)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps (trace / compile)")
    parser.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up step")
    parser.add_argument("--jit", action=argparse.BooleanOptionalAction, default=None, help="default: on with a GPU")
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 3, 1
    for m in args.ms:
        if not 1 <= m <= args.batch_size:
            parser.error(f"--ms: m={m} must be in [1, --batch-size={args.batch_size}]")
    jit = bool(tf.config.list_physical_devices("GPU")) if args.jit is None else args.jit
    device = "GPU" if tf.config.list_physical_devices("GPU") else f"CPU ({os.cpu_count()} cores)"

    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0, 1, size=(args.batch_size, 32, 32, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, 10, size=args.batch_size))
    modes = [("ERM", None)] + [(f"m-SAM m={m}", m) for m in args.ms]
    print(
        f"{args.model} ({args.norm} norm), batch {args.batch_size}, {device}, jit_compile={jit}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per mode"
    )
    print(f"{'mode':<16}{'images/s':>10}{'step (ms)':>11}{'vs ERM':>8}{'warm-up (s)':>13}")
    erm_time = None
    for label, m in modes:
        keras.utils.set_random_seed(0)
        net = get_model(args.model, weight_decay=5e-4, norm=args.norm)
        model = net if m is None else SAMModel(net, rho=args.rho, m=m)
        step, first = measure(model, x, y, args.warmup, args.steps, jit)
        erm_time = step if erm_time is None else erm_time
        print(
            f"{label:<16}{args.batch_size / step:>10.1f}{1000 * step:>11.0f}{step / erm_time:>7.2f}x{first:>13.1f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
