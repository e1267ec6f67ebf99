"""`msam resnet --strategy multiworker`: two worker processes on 127.0.0.1 train the same model."""

import json

import pytest

from cluster import run_workers


@pytest.mark.slow
def test_resnet_recipe_trains_under_multiworker_strategy(tmp_path):
    out = tmp_path / "run"
    command = ["-m", "recipes", "resnet", "--strategy", "multiworker", "--dataset", "synthetic",
               "--synthetic-size", "128", "64", "--model", "tiny", "--epochs", "2", "--batch-size", "16",
               "--m", "4", "--steps-per-epoch", "3", "--out", str(out), "--verbose", "0"]
    results = run_workers(tmp_path, lambda index: command)
    for code, output in results:
        assert code == 0, output[-3000:]
    chief, other = (json.loads(path.read_text()) for path in (out / "results.json", out / "worker1" / "results.json"))
    assert chief["replicas"] == 2 and chief["m_per_replica"] == 4 and chief["optimizer_steps"] == 6
    assert chief["history"][-1]["m"] == 4.0 and chief["history"][-1]["eps_norm"] == pytest.approx(0.1, rel=1e-5)
    assert chief["test_error"] == other["test_error"] and chief["history"][-1]["loss"] == other["history"][-1]["loss"]
