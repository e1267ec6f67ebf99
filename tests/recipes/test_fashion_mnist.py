"""recipes.fashion_mnist: the grid's runs and settings, the table, resume, and the CI-sized pipeline (smoke)."""

import csv
import json
import os

import numpy as np
import pytest
from idx_files import write_fashion_mnist

from recipes import cli
from recipes import fashion_mnist as fm
from recipes.config import SettingError, parse_command_line


def parse(argv):
    return parse_command_line("msam fashion_mnist", fm.EXPERIMENTS, fm.DEFAULT_EXPERIMENT, argv)


def test_default_grid_methods_noise_and_seeds():
    _, config = parse([])
    runs = fm.grid_runs(config)
    assert len(runs) == 2 * 2 * 4 and len({run.name for run in runs}) == len(runs)  # seeds x noise x methods
    assert [run.label(config.batch_size) for run in runs[:4]] == ["ERM", "SAM m=128 (batch)", "SAM m=32", "SAM m=8"]
    assert {run.noise for run in runs} == {0.0, 0.4} and {run.seed for run in runs} == {0, 1}
    assert (config.train_size, config.epochs, config.lr, config.batch_size) == (1000, 100, 0.05, 128)
    assert (config.model, config.width, config.eval_every) == ("resnet18", 8, 10)
    _, more = parse("--ms 128 32 8 1 --seeds 0 1 2 --noise 0 0.4 0.6".split())
    assert len(fm.grid_runs(more)) == 3 * 3 * 5


def test_each_run_is_a_resnet_config():
    _, config = parse(["--rho", "0.07", "--out", "/tmp/x"])
    erm, sam = fm.Run("erm", None, 0.4, 1), fm.Run("sam", 8, 0.4, 1)
    erm_config, sam_config = fm.run_config(config, erm), fm.run_config(config, sam)
    assert erm_config.sam_window == (0.0, 0.0) and erm_config.rho == 0.0  # ERM: SAM off, one gradient a step
    assert sam_config.sam_window == (0.0, 1.0) and (sam_config.rho, sam_config.m) == (0.07, 8)
    for run_config in (erm_config, sam_config):
        assert run_config.dataset == "fashion_mnist" and run_config.schedule == "piecewise"
        assert (run_config.seed, run_config.noise_seed, run_config.label_noise) == (1, 1, 0.4)
        assert (run_config.train_size, run_config.val_size, run_config.eval_every) == (1000, 500, 10)
        assert run_config.val_label_noise  # the papers' noisy validation labels
    assert sam_config.out == os.path.join("/tmp/x", "runs", "m8_noise40_seed1")


def test_bad_settings_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["fashion_mnist", "--ms", "256"])
    assert exit_info.value.code == 2 and "[1, --batch-size 128]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["fashion_mnist", "--seeds", "0", "0"])
    assert "distinct" in capsys.readouterr().err


def test_summary_mean_spread_and_every_seed():
    rows = []
    for seed, (test, memorised) in enumerate([(0.20, 0.9), (0.24, 1.0), (0.25, 0.95)]):
        rows.append({"noise": 0.4, "method": "ERM", "m": None, "seed": seed, "final_test_error": test,
                     "best_val_test_error": test - 0.05, "train_error_clean": 0.0, "memorised": memorised,
                     "sharpness": 0.1 * seed, "epoch_time_vs_erm": 1.0})
    (entry,) = fm.summarize(rows)
    assert entry["final_test_error_mean"] == pytest.approx(np.mean([0.20, 0.24, 0.25]))
    assert entry["final_test_error_std"] == pytest.approx(np.std([0.20, 0.24, 0.25], ddof=1))
    table = fm.markdown_table([entry])
    assert "23.0 ± 2.6 (20.0, 24.0, 25.0)" in table and "| 40 % | ERM | 0 1 2 |" in table
    assert "95.0 ± 5.0 (90.0, 100.0, 95.0)" in table and "1.00 ± 0.00 (1.00, 1.00, 1.00)" in table


def test_seconds_per_epoch_leaves_out_the_first_epoch():
    history = [{"epoch_seconds": 30.0}, {"epoch_seconds": 1.0}, {"epoch_seconds": 3.0}, {"epoch_seconds": 2.0}]
    assert fm.seconds_per_epoch(history) == 2.0 and fm.seconds_per_epoch(history[:1]) is None


def test_a_finished_run_of_other_settings_is_an_error(tmp_path):
    _, config = parse(["--out", str(tmp_path)])
    run = fm.grid_runs(config)[1]
    directory = tmp_path / "runs" / run.name
    directory.mkdir(parents=True)
    saved = json.loads(json.dumps(fm.dataclasses.asdict(fm.run_config(config, run))))
    saved["rho"] = 0.5
    (directory / "results.json").write_text(json.dumps({"config": saved}))
    with pytest.raises(SettingError, match=r"holds a finished run with other settings \(rho\)"):
        fm.finished(config, run)
    saved["rho"] = config.rho
    (directory / "results.json").write_text(json.dumps({"config": saved}))
    assert fm.finished(config, run)
    assert not fm.finished(config, fm.grid_runs(config)[2])  # no results.json


@pytest.mark.slow
def test_smoke_grid_writes_table_and_plots_then_skips_finished_runs(tmp_path, monkeypatch, capsys):
    data_dir, out = tmp_path / "fashion", tmp_path / "out"
    write_fashion_mnist(str(data_dir), n_train=1300, n_test=200)
    argv = ["fashion_mnist", "grid", "--variant", "smoke", "--data-dir", str(data_dir), "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 runs, 0 already finished, 4 to run" in printed
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["method"], r["noise"]) for r in rows] == [("ERM", "0.0"), ("SAM m=16", "0.0"), ("ERM", "0.4"),
                                                         ("SAM m=16", "0.4")]
    for row in rows:
        for key in ("final_test_error", "best_val_test_error", "train_error_clean", "sharpness_m16", "seconds_per_epoch"):
            assert np.isfinite(float(row[key])), (row["name"], key)
        assert float(row["epoch_time_vs_erm"]) > 0
        assert (row["memorised"] == "") == (row["noise"] == "0.0")
    summary = (out / "summary.md").read_text()
    assert "| 40 % | SAM m=16 | 0 |" in summary and "| 0 % | ERM | 0 |" in summary
    for name in ("test_error_vs_m.png", "memorisation.png"):
        assert os.path.getsize(out / name) > 10_000
    run_dir = out / "runs" / "m16_noise40_seed0"
    for name in ("results.json", "m_sharpness.csv", "history.csv", "final.weights.h5", "best.weights.h5"):
        assert (run_dir / name).exists(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["m_sharpness"]) == {"16"} and np.isfinite(results["m_sharpness"]["16"]["sharpness"])
    assert results["config"]["swa"] is False and results["config"]["sharpness_rho"] == 0.1

    # again: every run is finished, nothing is trained, the report is written again
    from recipes import resnet

    monkeypatch.setattr(resnet, "train", lambda config: pytest.fail("a finished run was trained again"))
    assert cli.main(argv) == 0
    assert "4 runs, 4 already finished, 0 to run" in capsys.readouterr().out
    # a finished run with other settings is not silently reused
    assert cli.main(argv + ["--rho", "0.3"]) == 2
    assert "other settings (rho)" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_rho_search_on_the_validation_split(tmp_path, capsys):
    data_dir, out = tmp_path / "fashion", tmp_path / "tune"
    write_fashion_mnist(str(data_dir), n_train=1300, n_test=100)
    argv = ["fashion_mnist", "tune", "--variant", "smoke", "--epochs", "1", "--data-dir", str(data_dir), "--out", str(out)]
    assert cli.main(argv) == 0
    table = (out / "summary.md").read_text()
    assert "| 0.05 | 16 |" in table and "| 0.1 | 16 |" in table and "best: rho = " in table
    with open(out / "summary.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(float(r["rho"]) for r in rows) == [0.05, 0.1]
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 for r in rows)
