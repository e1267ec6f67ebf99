"""How the k shards of a step run (a `Layout`), which layouts are worth trying, and choosing by timing.

A `Layout` says how `keras_msam.shards.run_shards` runs the k full shards of a step:
- `per_pass=1`: plain passes, one shard at a time (the model's own kernels, no per-shard weights);
- `per_pass=p > 1`: passes of p shards, each pass one `tf.vectorized_map` (every shard carries its own
  copy of the weights and gradients; `keras_msam.pfor_conv` runs convolutions with per-shard filters as
  batched matmuls); `per_pass=None`: all k shards in one pass;
- `loop`: the passes are visited by a `tf.while_loop` (the graph, and the compile time, stay the size of
  one pass) instead of being unrolled in Python (more to compile, nothing between the passes).

Every layout computes the same step (tested); only time, memory and compile time differ, and which is
fastest depends on the model, m, the backend and XLA. `SAMModel(shards_per_pass="auto")` therefore
measures: `candidates` lists the layouts worth timing for a step (at most 3, the static guess first),
`LayoutTuner` runs each for a few real training steps of `fit` and keeps the fastest. `static_layout` is
the guess used where nothing is measured (a step traced outside `fit`, and batch sizes other than the
first one of `fit`, e.g. the short last batch).

The guesses follow what was measured on CPUs (docs/performance.md): without XLA, plain passes (oneDNN
runs small batches near the two-pass floor; a `tf.while_loop` of them keeps the trace small); with XLA,
plain passes up to 16 shards (XLA compiles them well), vectorized passes beyond (XLA on CPU runs a
`tf.while_loop` around convolutions tens of times slower, and compiles many unrolled passes slowly).
"""

import dataclasses
import typing

MAX_UNROLLED_PASSES = 16
VECTORIZED_MEMORY_BUDGET = 2 * 1024**3
MIN_SHARDS_PER_VECTORIZED_PASS = 32
MAX_VECTORIZED_PASSES = 4
TIMED_STEPS = 2  # timed steps per candidate after its first (compiling) step


class Layout(typing.NamedTuple):
    """How the full shards of a step run: `per_pass` shards per pass (1: plain passes; None: all in
    one vectorized pass), the passes unrolled or in a `tf.while_loop` (`loop`). A tuple of plain values,
    so that a `tf.function` taking it is traced once per layout."""

    per_pass: typing.Optional[int] = 1
    loop: bool = False

    def describe(self, num_shards):
        passes = 1 if self.per_pass is None else num_shards // self.per_pass
        how = "in a while loop" if self.loop and passes > 1 else "unrolled"
        if self.per_pass == 1:
            return f"{num_shards} plain pass{'es' if num_shards > 1 else ''} {how}"
        per_pass = num_shards if self.per_pass is None else self.per_pass
        return f"{passes} vectorized pass{'es' if passes > 1 else ''} of {per_pass} shards {how}"


def plain(num_shards):
    """Plain passes: unrolled up to MAX_UNROLLED_PASSES, in a while loop beyond."""
    return Layout(1, loop=num_shards > MAX_UNROLLED_PASSES)


def vectorized(num_shards, per_pass):
    """Vectorized passes of `per_pass` shards (a divisor of num_shards)."""
    return Layout(per_pass, loop=num_shards // per_pass > MAX_UNROLLED_PASSES)


def vectorized_pass_size(num_shards, bytes_per_shard):
    """Shards per vectorized pass: at most MAX_VECTORIZED_PASSES passes of at least
    MIN_SHARDS_PER_VECTORIZED_PASS shards (the smallest such divisor of k), unless the per-shard copies
    (`bytes_per_shard` each) of a pass that size exceed VECTORIZED_MEMORY_BUDGET: then the largest
    divisor of k that fits. A few passes rather than one: a pass of 128 one-example shards streams its
    im2col patches through the caches once per convolution (passes of 32 were faster on CPU); at most 4,
    because each pass is compiled on its own."""
    divisors = [d for d in range(1, num_shards + 1) if num_shards % d == 0]
    wanted = max(MIN_SHARDS_PER_VECTORIZED_PASS, -(-num_shards // MAX_VECTORIZED_PASSES))
    fits = max(1, VECTORIZED_MEMORY_BUDGET // max(1, bytes_per_shard))
    return min([d for d in divisors if wanted <= d <= fits] or [max(d for d in divisors if d <= fits)])


def static_layout(num_shards, bytes_per_shard, jit_compile, vectorizable=True):
    """The layout used without measurement (see the module docstring); plain passes for a model that
    `keras_msam.vectorization` rules out of vectorized ones."""
    if num_shards <= 1 or not jit_compile or num_shards <= MAX_UNROLLED_PASSES or not vectorizable:
        return plain(num_shards)
    return vectorized(num_shards, vectorized_pass_size(num_shards, bytes_per_shard))


def candidates(num_shards, bytes_per_shard, jit_compile, on_gpu, vectorizable=True):
    """The layouts `shards_per_pass="auto"` times for a step of k shards (at most 3, the static guess
    first): plain passes, vectorized passes of `vectorized_pass_size`, all shards in one vectorized pass.

    Left out: plain passes in a while loop under XLA on a CPU (tens of times slower, measured),
    vectorized passes whose per-shard copies exceed VECTORIZED_MEMORY_BUDGET, and every vectorized
    layout for a model that is not `vectorizable` (then the static guess alone: nothing is timed)."""
    guess = static_layout(num_shards, bytes_per_shard, jit_compile, vectorizable)
    if num_shards <= 1 or not vectorizable:
        return [guess]
    options = [guess]
    if not (jit_compile and not on_gpu and plain(num_shards).loop):
        options.append(plain(num_shards))
    per_pass = vectorized_pass_size(num_shards, bytes_per_shard)
    if per_pass > 1:
        options.append(vectorized(num_shards, per_pass))
    if num_shards * bytes_per_shard <= VECTORIZED_MEMORY_BUDGET:
        options.append(Layout(num_shards))
    return list(dict.fromkeys(options))[:3]


def user_layout(shards_per_pass, num_shards):
    """The layout of an explicit `shards_per_pass` (None: one vectorized pass; an int: passes of that size)."""
    if shards_per_pass is None:
        return Layout(None)
    per_pass = min(shards_per_pass, num_shards)
    if num_shards % per_pass:
        raise ValueError(
            f"shards_per_pass={shards_per_pass} must divide the number of shards per step ({num_shards}); "
            "choose a divisor, None (one pass) or 'auto'."
        )
    return plain(num_shards) if per_pass == 1 else vectorized(num_shards, per_pass)


@dataclasses.dataclass
class Timing:
    """What the tuner measured for one layout: the first call (trace + compile + step) and step times."""

    layout: Layout
    first_call_s: float = None
    step_s: list = dataclasses.field(default_factory=list)

    @property
    def best_s(self):
        return min(self.step_s) if self.step_s else float("inf")


class LayoutTuner:
    """Times candidate layouts on successive real steps and keeps the fastest (like cuDNN's autotuning).

    Every candidate runs 1 + `timed_steps` steps: the first compiles it (its time is reported, not
    compared), the others are timed; a candidate already 3x slower than the best so far stops early.
    `layout()` is the layout for the next step; `record(layout, seconds)` reports a step's time;
    `chosen` is set once every candidate has been timed. The steps are real training steps: every
    layout computes the same update, so tuning costs compile time and slower steps, never a wrong step.
    """

    def __init__(self, options, timed_steps=TIMED_STEPS):
        self.timings = [Timing(layout) for layout in options]
        self.timed_steps = timed_steps
        self.chosen = options[0] if len(options) == 1 else None
        self.tuning_s = 0.0

    def layout(self):
        if self.chosen is not None:
            return self.chosen
        return next(t.layout for t in self.timings if not self._finished(t))

    def record(self, layout, seconds):
        if self.chosen is not None:
            return
        timing = next(t for t in self.timings if t.layout == layout)
        if timing.first_call_s is None:
            timing.first_call_s = seconds
        else:
            timing.step_s.append(seconds)
        self.tuning_s += seconds
        if all(self._finished(t) for t in self.timings):
            self.chosen = min(self.timings, key=lambda t: t.best_s).layout

    def _finished(self, timing):
        if timing.first_call_s is None:
            return False
        best = min((t.best_s for t in self.timings if t is not timing), default=float("inf"))
        return len(timing.step_s) >= self.timed_steps or (timing.step_s and timing.best_s > 3 * best)

    def report(self, num_shards):
        """One line: the chosen layout and what each candidate measured."""
        parts = []
        for t in sorted(self.timings, key=lambda t: t.best_s):
            mark = "chosen: " if t.layout == self.chosen else ""
            parts.append(f"{mark}{t.layout.describe(num_shards)} {1000 * t.best_s:.0f} ms/step "
                         f"(first call {t.first_call_s:.1f} s)")
        return "; ".join(parts) + f"; tuning took {self.tuning_s:.1f} s over {sum(1 + len(t.step_s) for t in self.timings)} steps"
