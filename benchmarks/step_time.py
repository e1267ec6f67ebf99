"""Train-step time of m-SAM against ERM and against tf_keras' SAM, side by side in one run.

    python benchmarks/step_time.py --quick                 # the CNN, m in (128, 8, 1), a few minutes
    python benchmarks/step_time.py --out results/step_time # every model, m and jit setting (an hour or more)

For each model (the 6-conv CNN of the performance notes, a small PreAct ResNet with BatchNorm, an MLP,
a 2-block transformer encoder on int tokens, MobileNetV2 at alpha 0.35; `--models` picks them) and jit
setting, at batch 128 and every m: Keras 3 ERM, `SAMModel` (its default `shards_per_pass="auto"`:
the layout measured fastest on its first steps), tf_keras ERM and tf_keras'
`SharpnessAwareMinimization(num_batch_splits=128/m)` (if `tf-keras` is installed: `pip install -e ".[bench]"`).

Printed for every m: SAMModel step / Keras ERM step, tf_keras SAM step / tf_keras ERM step, tf_keras SAM
step / SAMModel step (> 1: SAMModel faster; in brackets the lowest and highest of the same ratio within
one round, where the two steps ran back to back: the noise of the comparison), the first call of both (trace + compile + one step), the
time SAMModel's layout tuning took after its first call and the layout it chose, and the memory a step
adds. Step times are medians of `--steps` rounds in which every configuration of the model and jit
setting takes one step in turn (round-robin: the machine's drift hits them alike). With --out, also a
CSV and a markdown table. `--tf-keras-ms` limits tf_keras' SAM to some m (its first call unrolls 128/m
splits into one graph: minutes for the deeper models at m = 1); the other rows then show "-".
"""

import argparse
import csv
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")  # the CPU allocator that reports peak memory

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_msam import SAMModel  # noqa: E402

BATCH = 128
ALL_MS = (128, 32, 16, 8, 4, 2, 1)


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


def mlp(keras_module=keras):
    """An MLP on flattened 32x32x3 images: 3072-512-256-10, ReLU."""
    layers = keras_module.layers
    return keras_module.Sequential(
        [layers.Input((32, 32, 3)), layers.Flatten(), layers.Dense(512, activation="relu"),
         layers.Dense(256, activation="relu"), layers.Dense(10)]
    )


SEQUENCE, VOCAB, WIDTH = 64, 1000, 64
_CUSTOM_LAYERS = {}


def position_embedding(keras_module=keras):
    """A learned position embedding added to the token embedding, keeping its padding mask (a custom
    layer: not in keras_msam.vectorization's allowlist, so SAMModel runs plain passes)."""
    if keras_module not in _CUSTOM_LAYERS:

        class PositionEmbedding(keras_module.layers.Layer):
            def __init__(self, **kwargs):
                super().__init__(**kwargs)
                self.supports_masking = True

            def build(self, input_shape):
                self.positions = self.add_weight(shape=tuple(input_shape[1:]), initializer="random_normal",
                                                 name="positions")

            def call(self, inputs):
                return inputs + self.positions

            def compute_mask(self, inputs, mask=None):
                return mask

        _CUSTOM_LAYERS[keras_module] = PositionEmbedding
    return _CUSTOM_LAYERS[keras_module]()


def embedding(keras_module=keras):
    """Keras 3's Embedding; for tf_keras, an Embedding whose weight gradient is dense: tf_keras'
    SharpnessAwareMinimization sums the splits' gradients with `tf.reduce_sum`, which fails on the
    IndexedSlices of a plain Embedding (TypeError). SAMModel takes the plain layer."""
    if keras_module is keras:
        return keras.layers.Embedding(VOCAB, WIDTH, mask_zero=True)
    if "embedding" not in _CUSTOM_LAYERS:

        @tf.custom_gradient
        def dense_identity(table):
            return tf.identity(table), tf.convert_to_tensor

        class DenseGradientEmbedding(keras_module.layers.Embedding):
            def call(self, ids):
                return tf.gather(dense_identity(tf.convert_to_tensor(self.embeddings)), tf.cast(ids, "int32"))

        _CUSTOM_LAYERS["embedding"] = DenseGradientEmbedding
    return _CUSTOM_LAYERS["embedding"](VOCAB, WIDTH, mask_zero=True)


def transformer(keras_module=keras):
    """A transformer encoder classifier on int tokens (vocab 1000, length 64, 0 = padding): Embedding(mask_zero)
    + learned positions, 2 post-LN blocks of MultiHeadAttention (4 heads, key_dim 16) and a GELU feed-forward
    64-128-64 with residuals, masked average pooling, Dense(10)."""
    layers = keras_module.layers
    tokens = layers.Input((SEQUENCE,), dtype="int32")
    h = position_embedding(keras_module)(embedding(keras_module)(tokens))
    for _ in range(2):
        attention = layers.MultiHeadAttention(num_heads=4, key_dim=16)(h, h)
        h = layers.LayerNormalization()(layers.Add()([h, attention]))
        feed_forward = layers.Dense(WIDTH)(layers.Dense(2 * WIDTH, activation="gelu")(h))
        h = layers.LayerNormalization()(layers.Add()([h, feed_forward]))
    outputs = layers.Dense(10)(layers.GlobalAveragePooling1D()(h))
    return keras_module.Model(tokens, outputs)


def mobilenet_v2(keras_module=keras):
    """`applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10)` of `keras_module`,
    with logits out (classifier_activation=None, as the other models: the loss takes logits)."""
    return keras_module.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35, weights=None, classes=10,
                                                 classifier_activation=None)


MODELS = {"cnn": cnn, "resnet": resnet, "mlp": mlp, "transformer": transformer, "mobilenet_v2": mobilenet_v2}


def inputs(name, rng):
    """A batch for model `name`: int tokens for the transformer (random lengths 8-64, then padding 0),
    uniform 32x32x3 images for the others; integer labels 0-9."""
    if name == "transformer":
        x = rng.integers(1, VOCAB, size=(BATCH, SEQUENCE)).astype("int32")
        x[np.arange(SEQUENCE) >= rng.integers(8, SEQUENCE + 1, size=(BATCH, 1))] = 0
    else:
        x = rng.uniform(size=(BATCH, 32, 32, 3)).astype("float32")
    return x, rng.integers(0, 10, size=(BATCH,))


def keras3_model(build, m, jit):
    """Keras 3 ERM (m None) or SAMModel with its default layout choice."""
    model = build() if m is None else SAMModel(build(), rho=0.05, m=m)
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    return model


def tf_keras_model(build, m, jit):
    """tf_keras ERM (m None) or its SharpnessAwareMinimization with BATCH / m splits."""
    import tf_keras

    model = build(tf_keras)
    if m is not None:
        model = tf_keras.models.experimental.SharpnessAwareMinimization(model, rho=0.05, num_batch_splits=BATCH // m)
    model.compile(optimizer=tf_keras.optimizers.SGD(0.01),
                  loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=jit)
    return model


def timed_step(model, x, y):
    start = time.perf_counter()
    model.train_on_batch(x, y)
    return time.perf_counter() - start


def until_tuned(model, x, y, max_steps=12):
    """Seconds of the steps SAMModel's layout tuning takes after the first call (0 for the others)."""
    if not isinstance(model, SAMModel):
        return 0.0, ""
    seconds = 0.0
    for _ in range(max_steps):
        if BATCH in model.shard_layouts:
            break
        seconds += timed_step(model, x, y)
    layout = model.shard_layouts.get(BATCH)
    return seconds, "" if layout is None else layout.describe(model.num_shards(BATCH))


def round_robin_times(models, x, y, rounds):
    """Step times of each model over `rounds` rounds of one step each, in turn."""
    times = [[] for _ in models]
    for _ in range(rounds):
        for model, record in zip(models, times):
            record.append(timed_step(model, x, y))
    return times


def step_peak_mb(model, x, y):
    """Peak memory TensorFlow's CPU allocator holds during one step beyond what it held before, in MB."""
    try:
        tf.config.experimental.reset_memory_stats("CPU:0")
        before = tf.config.experimental.get_memory_info("CPU:0")["current"]
        model.train_on_batch(x, y)
        return (tf.config.experimental.get_memory_info("CPU:0")["peak"] - before) / 1024**2
    except (ValueError, RuntimeError):
        return float("nan")


def measure(name, jit, ms, rounds, tf_keras_ms, x, y):
    """Rows of one model and jit setting: every configuration built, first-called, tuned, then timed.
    tf_keras' ERM and SAM run for the m in `tf_keras_ms` (none: no tf_keras)."""
    build = MODELS[name]
    tf_keras_ms = [m for m in ms if m in tf_keras_ms]
    configs = [("keras", None)] + [("keras", m) for m in ms]
    if tf_keras_ms:
        configs += [("tf_keras", None)] + [("tf_keras", m) for m in tf_keras_ms]
    models, first, tuning, layout = {}, {}, {}, {}
    for framework, m in configs:
        make = keras3_model if framework == "keras" else tf_keras_model
        models[framework, m] = make(build, m, jit)
        first[framework, m] = timed_step(models[framework, m], x, y)
        tuning[framework, m], layout[framework, m] = until_tuned(models[framework, m], x, y)
        print(f"  built {framework} {'ERM' if m is None else f'm={m}'}: first call {first[framework, m]:.1f} s"
              + (f", tuning {tuning[framework, m]:.1f} s -> {layout[framework, m]}" if layout[framework, m] else ""),
              flush=True)
    times = dict(zip(configs, round_robin_times([models[c] for c in configs], x, y, rounds)))
    medians = {c: statistics.median(t) for c, t in times.items()}
    memory = {c: step_peak_mb(models[c], x, y) for c in configs}
    rows = []
    for m in ms:
        ours, erm = medians["keras", m], medians["keras", None]
        row = {"model": name, "jit": jit, "m": m, "erm_ms": 1e3 * erm, "sam_ms": 1e3 * ours, "sam_vs_erm": ours / erm,
               "first_call_s": first["keras", m], "tuning_s": tuning["keras", m], "layout": layout["keras", m],
               "memory_mb": memory["keras", m], "erm_memory_mb": memory["keras", None]}
        if m in tf_keras_ms:
            theirs = medians["tf_keras", m]
            # the noise of the comparison: the same ratio within each round (both timed back to back)
            per_round = [a / b for a, b in zip(times["tf_keras", m], times["keras", m])]
            row.update(tf_keras_vs_erm=theirs / medians["tf_keras", None], tf_keras_vs_sam=theirs / ours,
                       tf_keras_vs_sam_min=min(per_round), tf_keras_vs_sam_max=max(per_round),
                       tf_keras_first_call_s=first["tf_keras", m], tf_keras_memory_mb=memory["tf_keras", m])
        rows.append(row)
    return rows


def print_rows(rows):
    print(f"  {'m':>4} {'SAM/ERM':>8} {'tfk/tfkERM':>10} {'tfk/SAM (rounds)':>17} {'first call':>15} {'tuning':>7}"
          f" {'memory':>8}  layout")
    for r in rows:
        tfk = (f"{r['tf_keras_vs_erm']:10.2f} {r['tf_keras_vs_sam']:5.2f} ({r['tf_keras_vs_sam_min']:.2f}-"
               f"{r['tf_keras_vs_sam_max']:.2f})" if "tf_keras_vs_sam" in r else f"{'-':>10} {'-':>17}")
        theirs = f"{r['tf_keras_first_call_s']:.1f}" if "tf_keras_first_call_s" in r else "-"
        first = f"{r['first_call_s']:.1f}/{theirs} s"
        print(f"  {r['m']:>4} {r['sam_vs_erm']:8.2f} {tfk} {first:>15} {r['tuning_s']:6.1f}s"
              f" {r['memory_mb']:6.0f}MB  {r['layout']}", flush=True)


def write_tables(rows, out):
    os.makedirs(out, exist_ok=True)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(os.path.join(out, "step_time.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| model | jit | m | ERM ms | SAMModel / ERM | tf_keras SAM / its ERM | tf_keras / SAMModel | "
             "first call SAMModel / tf_keras (s) | tuning (s) | layout chosen | step memory (MB) |",
             "|" + "---|" * 11]
    for r in rows:
        tfk = (f"{r['tf_keras_vs_erm']:.2f} | {r['tf_keras_vs_sam']:.2f} ({r['tf_keras_vs_sam_min']:.2f}-"
               f"{r['tf_keras_vs_sam_max']:.2f}) | "
               f"{r['first_call_s']:.1f} / {r['tf_keras_first_call_s']:.1f}" if "tf_keras_vs_sam" in r
               else f"- | - | {r['first_call_s']:.1f} / -")
        lines.append(f"| {r['model']} | {'on' if r['jit'] else 'off'} | {r['m']} | {r['erm_ms']:.0f} | "
                     f"{r['sam_vs_erm']:.2f} | {tfk} | {r['tuning_s']:.1f} | {r['layout']} | {r['memory_mb']:.0f} |")
    with open(os.path.join(out, "step_time.md"), "w") as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=sorted(MODELS), choices=sorted(MODELS))
    parser.add_argument("--ms", nargs="+", type=int, default=list(ALL_MS), help="shard sizes (divisors of 128)")
    parser.add_argument("--jit", nargs="+", default=["off", "on"], choices=["off", "on"])
    parser.add_argument("--steps", type=int, default=5, help="timed rounds per model and jit setting")
    parser.add_argument("--no-tf-keras", action="store_true", help="skip tf_keras")
    parser.add_argument("--tf-keras-ms", nargs="+", type=int, default=None,
                        help="the m at which tf_keras' SAM runs (default: every m of --ms)")
    parser.add_argument("--quick", action="store_true", help="the CNN only, m in (128, 8, 1), 5 rounds")
    parser.add_argument("--out", default=None, help="directory for step_time.csv and step_time.md")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.ms = ["cnn"], [128, 8, 1]
    for m in args.ms:
        if m < 1 or BATCH % m:
            parser.error(f"--ms: every m must divide the batch of {BATCH}; got {m}")
    with_tf_keras = not args.no_tf_keras
    if with_tf_keras:
        try:
            import tf_keras  # noqa: F401
        except ImportError:
            with_tf_keras = False
            print("tf_keras is not installed (pip install -e \".[bench]\"): its SAM is skipped.")

    tf_keras_ms = (args.ms if args.tf_keras_ms is None else args.tf_keras_ms) if with_tf_keras else []
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"batch {BATCH}, {cores} of {os.cpu_count()} CPUs, TF {tf.__version__}, Keras {keras.__version__}; medians of "
          f"{args.steps} round-robin rounds; ratios to the ERM step of the same framework, run and jit setting")
    rows = []
    for name in args.models:
        for jit in args.jit:
            print(f"\n{name}, jit_compile={jit == 'on'}", flush=True)
            x, y = inputs(name, np.random.default_rng(0))
            group = measure(name, jit == "on", args.ms, args.steps, tf_keras_ms, x, y)
            print_rows(group)
            rows += group
            keras.backend.clear_session()
            if args.out:  # after every group: an interrupted run keeps what it measured
                write_tables(rows, args.out)
    if args.out:
        print(f"\nwrote {args.out}/step_time.csv and step_time.md")


if __name__ == "__main__":
    main()
