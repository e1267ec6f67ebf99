"""recipes.tune: the KerasTuner search on a task from the command line, its summary, its errors."""

import csv
import os

import pytest

from recipes import cli


@pytest.mark.slow
def test_search_writes_and_prints_the_summary(tmp_path, capsys):
    argv = ["tune", "diag_nets", "--max-trials", "2", "--epochs", "1", "--steps-per-epoch", "3", "--m", "1,5"]
    assert cli.main(argv + ["--directory", str(tmp_path), "--seed", "2"]) == 0
    with open(tmp_path / "diag_nets" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 and list(rows[0]) == ["trial_id", "method", "rho", "m", "lr", "objective"]
    objectives = [float(r["objective"]) for r in rows]
    assert objectives == sorted(objectives)  # best (lowest val_loss) first
    assert all(r["m"] in ("", "1", "5") for r in rows)
    printed = capsys.readouterr().out
    assert printed == (tmp_path / "diag_nets" / "summary.md").read_text()
    assert printed.startswith("| trial_id | method | rho | m | lr | objective |")
    assert os.path.isfile(tmp_path / "diag_nets" / "oracle.json")


def test_unknown_task_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["tune", "cifar11"])
    assert exit_info.value.code == 2
    assert "valid experiments: diag_nets, teacher_student, cifar10, cifar100, cifar_synthetic" in capsys.readouterr().err


def test_bad_values_exit_like_argparse(tmp_path, capsys):
    # m = 3 does not divide the batch of 20: found by SAMHyperModel, reported as a usage error
    assert cli.main(["tune", "diag_nets", "--m", "3", "--directory", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "msam tune: error: m_choices [3] do not divide the per-replica batch of 20" in err
    assert "Traceback" not in err and not os.path.exists(tmp_path / "diag_nets")
    with pytest.raises(SystemExit) as exit_info:  # checked by the argument's type
        cli.main(["tune", "diag_nets", "--rho", "0.5,-1"])
    assert exit_info.value.code == 2 and "expected LOW,HIGH or VALUE" in capsys.readouterr().err
