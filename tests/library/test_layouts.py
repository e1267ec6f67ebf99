"""Shard layouts: the static guess, the candidates timed under shards_per_pass="auto", and the tuner."""

import pytest

from keras_msam import layouts
from keras_msam.layouts import Layout, LayoutTuner


@pytest.mark.parametrize(
    "num_shards, bytes_per_shard, expected",
    [
        (16, 1, Layout(1)),  # up to MAX_UNROLLED_PASSES: unrolled plain passes
        (20, 1, Layout(20)),  # fewer than 32 shards: one vectorized pass
        (128, 1, Layout(32)),  # 4 passes of 32
        (256, 1, Layout(64)),  # at most 4 passes
        (100, 1, Layout(50)),  # the smallest divisor >= 32
        (128, 2 * 1024**3 // 10, Layout(8)),  # 10 shards fit the memory budget: the largest divisor <= 10
        (128, 2 * 1024**3, Layout(1, loop=True)),  # not even one shard fits: plain passes, in a loop
    ],
)
def test_static_layout_under_xla(num_shards, bytes_per_shard, expected):
    chosen = layouts.static_layout(num_shards, bytes_per_shard, jit_compile=True)
    assert chosen == expected
    assert chosen.per_pass is None or num_shards % chosen.per_pass == 0


@pytest.mark.parametrize("num_shards, loop", [(1, False), (16, False), (17, True), (128, True)])
def test_static_layout_without_xla_is_plain_passes(num_shards, loop):
    assert layouts.static_layout(num_shards, 1, jit_compile=False) == Layout(1, loop=loop)


def test_candidates_start_with_the_guess_and_leave_out_what_is_known_to_collapse():
    # no XLA, 32 shards: plain passes in a loop (the guess), vectorized passes, all shards at once
    assert layouts.candidates(32, 1, jit_compile=False, on_gpu=False) == [Layout(1, loop=True), Layout(32)]
    # XLA on a CPU, 128 shards: no while loop of plain passes (XLA CPU runs it tens of times slower)
    xla_cpu = layouts.candidates(128, 1, jit_compile=True, on_gpu=False)
    assert xla_cpu == [Layout(32), Layout(128)] and all(not (c.per_pass == 1) for c in xla_cpu)
    # on a GPU the loop is measured too
    assert Layout(1, loop=True) in layouts.candidates(128, 1, jit_compile=True, on_gpu=True)
    # one shard: nothing to choose; too large for a vectorized pass: plain passes only
    assert layouts.candidates(1, 1, True, False) == [Layout(1)]
    assert layouts.candidates(8, 2 * 1024**3, False, False) == [Layout(1)]
    assert all(len(layouts.candidates(k, 1, jit, gpu)) <= 3 for k in (2, 8, 64, 128) for jit in (0, 1) for gpu in (0, 1))


def test_user_layout_checks_that_the_pass_size_divides_the_shards():
    assert layouts.user_layout(None, 12) == Layout(None)
    assert layouts.user_layout(1, 40) == Layout(1, loop=True)
    assert layouts.user_layout(4, 12) == Layout(4)
    with pytest.raises(ValueError, match="shards_per_pass=5 must divide the number of shards per step"):
        layouts.user_layout(5, 12)


def test_tuner_times_each_candidate_after_its_first_call_and_keeps_the_fastest():
    options = [Layout(1), Layout(8), Layout(16)]
    tuner = LayoutTuner(options, timed_steps=2)
    seconds = {Layout(1): [9.0, 0.30, 0.32], Layout(8): [20.0, 0.21, 0.20], Layout(16): [30.0, 0.25, 0.26]}
    runs = []
    while tuner.chosen is None:
        layout = tuner.layout()
        runs.append(layout)
        tuner.record(layout, seconds[layout][runs.count(layout) - 1])
    assert runs == [Layout(1)] * 3 + [Layout(8)] * 3 + [Layout(16)] * 3
    assert tuner.chosen == Layout(8) and tuner.layout() == Layout(8)  # the first calls (compiles) do not count
    assert tuner.tuning_s == pytest.approx(sum(sum(v) for v in seconds.values()))
    report = tuner.report(16)
    assert report.startswith("chosen: 2 vectorized passes of 8 shards unrolled 200 ms/step") and "first call 20.0 s" in report


def test_tuner_stops_timing_a_candidate_three_times_slower_than_the_best():
    tuner = LayoutTuner([Layout(1), Layout(4)], timed_steps=3)
    for seconds in (1.0, 0.1, 0.1, 0.1):
        tuner.record(tuner.layout(), seconds)
    tuner.record(tuner.layout(), 5.0)  # Layout(4)'s first call
    assert tuner.layout() == Layout(4)
    tuner.record(Layout(4), 0.5)  # 5x slower than the best: no more steps for it
    assert tuner.chosen == Layout(1)


def test_a_model_that_vectorized_passes_do_not_support_gets_plain_passes_only():
    for jit in (False, True):
        for num_shards in (2, 16, 128):
            assert layouts.candidates(num_shards, 1, jit, False, vectorizable=False) == [layouts.plain(num_shards)]
            assert layouts.static_layout(num_shards, 1, jit, vectorizable=False) == layouts.plain(num_shards)
