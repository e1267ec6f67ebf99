"""Median train-step time of m-SAM against ERM on the same model and batch, side by side in one run.

    python benchmarks/step_time.py --quick            # 6-conv CNN, m in (128, 8, 1), CPU, ~2 minutes
    python benchmarks/step_time.py                    # CNN and small ResNet, m in (128, 32, 8, 1), ~10 minutes

Prints, for each model and jit setting: ERM, SAMModel at each m, and (if `tf-keras` is installed:
`pip install tf-keras`) tf_keras' `SharpnessAwareMinimization(num_batch_splits=batch/m)`, each as a
median step time, its ratio to ERM of the same framework and jit setting, the first call's time
(trace + compile), and the peak memory of a step. The configurations of one model and jit
setting are timed round-robin (one step each per round), so the ratios come from the same minutes of
a noisy machine; compare ratios, not milliseconds.
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


def cnn(keras_module=keras):
    """The performance notes' 6-conv CNN: 32-32-64-64-128-128 3x3 convs, max-pool every 2, GAP, dense 10."""
    layers = keras_module.layers
    stack = [layers.Input((32, 32, 3))]
    for i, width in enumerate((32, 32, 64, 64, 128, 128)):
        stack.append(layers.Conv2D(width, 3, padding="same", activation="relu"))
        if i % 2 == 1 and i < 5:
            stack.append(layers.MaxPooling2D())
    stack += [layers.GlobalAveragePooling2D(), layers.Dense(10)]
    return keras_module.Sequential(stack)


def resnet(keras_module=keras):
    """A small PreAct ResNet (blocks 1,1,1 at widths 16-32-64, BatchNorm), written with `keras_module`."""
    layers = keras_module.layers
    inputs = layers.Input((32, 32, 3))
    h = layers.Conv2D(16, 3, padding="same", use_bias=False)(inputs)
    for stage, width in enumerate((16, 32, 64)):
        stride = 1 if stage == 0 else 2
        pre = layers.Activation("relu")(layers.BatchNormalization()(h))
        shortcut = h if stride == 1 and h.shape[-1] == width else layers.Conv2D(width, 1, stride, use_bias=False)(pre)
        out = layers.Conv2D(width, 3, stride, padding="same", use_bias=False)(pre)
        out = layers.Activation("relu")(layers.BatchNormalization()(out))
        out = layers.Conv2D(width, 3, padding="same", use_bias=False)(out)
        h = layers.Add()([out, shortcut])
    h = layers.Activation("relu")(layers.BatchNormalization()(h))
    outputs = layers.Dense(10)(layers.GlobalAveragePooling2D()(h))
    return keras_module.Model(inputs, outputs)


MODELS = {"cnn": cnn, "resnet": resnet}
LOSS = dict(from_logits=True)


def first_call(model, x, y):
    """Seconds of the first train_on_batch (trace + compile + one step)."""
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return time.perf_counter() - start


def interleaved_medians(models, x, y, steps):
    """Median step time of each model, timed round-robin (one step of each per round), so that the
    machine's drift during the run hits every configuration alike."""
    times = [[] for _ in models]
    for _ in range(steps):
        for model, record in zip(models, times):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            record.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def step_peak_mb(model, x, y):
    """Peak memory TensorFlow's CPU allocator holds during one step beyond what it held before (the
    weights, optimizer slots and inputs of every model built so far), in MB; NaN where not reported."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        model.train_on_batch(x, y)
        return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 1024**2
    except (ValueError, RuntimeError):
        return float("nan")


def keras3_model(build, kind, m, jit):
    model = build()
    if kind == "sam":
        model = SAMModel(model, rho=0.05, m=m)
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss=keras.losses.SparseCategoricalCrossentropy(**LOSS),
                  jit_compile=jit)
    return model


def tf_keras_model(build, kind, splits, jit):
    import tf_keras

    model = build(tf_keras)
    if kind == "sam":
        model = tf_keras.models.experimental.SharpnessAwareMinimization(model, rho=0.05, num_batch_splits=splits)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(**LOSS), jit_compile=jit)
    return model


def report(name, first, median, erm, peak_mb):
    print(f"  {name:<28} {median * 1e3:8.1f} ms  {median / erm:5.2f}x ERM   first call {first:5.1f} s   "
          f"step memory {peak_mb:5.0f} MB", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["cnn", "resnet"], choices=sorted(MODELS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--ms", nargs="+", type=int, default=None, help="shard sizes (default: batch 32 8 1)")
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    parser.add_argument("--no-tf-keras", action="store_true", help="skip tf_keras' SAM")
    parser.add_argument("--quick", action="store_true", help="cnn only, 7 timed steps, m in (batch, 8, 1)")
    args = parser.parse_args(argv)
    ms = args.ms or [args.batch, 32, 8, 1]
    if args.quick:
        args.models, args.steps, ms = ["cnn"], 7, args.ms or [args.batch, 8, 1]
    for m in ms:
        if m < 1 or m > args.batch:
            parser.error(f"--ms: every m must be in 1..{args.batch} (the batch); got {m}")
    try:
        import tf_keras  # noqa: F401
        have_tf_keras = not args.no_tf_keras
    except ImportError:
        have_tf_keras = False
        print("tf_keras is not installed (pip install tf-keras): its SAM is skipped.")

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(args.batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, size=(args.batch,))
    print(f"batch {args.batch}, {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}; "
          f"medians of {args.steps} interleaved steps, ratios to the ERM step of the same framework")
    for name in args.models:
        build = MODELS[name]
        for jit in args.jit:
            jit_on = jit == "on"
            print(f"\n{name}, jit_compile={jit_on}: median step, ratio, first call (trace + compile), memory a step adds", flush=True)
            configs = [("Keras 3 ERM", keras3_model(build, "erm", None, jit_on), "Keras 3 ERM")]
            configs += [(f"SAMModel m={m}", keras3_model(build, "sam", m, jit_on), "Keras 3 ERM") for m in ms]
            if have_tf_keras:
                configs.append(("tf_keras ERM", tf_keras_model(build, "erm", 1, jit_on), "tf_keras ERM"))
                for m in ms:
                    if args.batch // m > 32:
                        print(f"  (tf_keras SAM m={m} skipped: {args.batch // m} splits, a loop too slow to time)")
                        continue
                    configs.append((f"tf_keras SAM m={m}", tf_keras_model(build, "sam", args.batch // m, jit_on),
                                    "tf_keras ERM"))
            firsts = [first_call(model, x, y) for _, model, _ in configs]
            medians = dict(zip([c[0] for c in configs], interleaved_medians([c[1] for c in configs], x, y, args.steps)))
            for (label, model, baseline), first in zip(configs, firsts):
                report(label, first, medians[label], medians[baseline], step_peak_mb(model, x, y))
            for m in ms:
                if f"tf_keras SAM m={m}" in medians:
                    speedup = medians[f"tf_keras SAM m={m}"] / medians[f"SAMModel m={m}"]
                    print(f"  m={m}: tf_keras SAM step / SAMModel step = {speedup:.2f}")

if __name__ == "__main__":
    main()
