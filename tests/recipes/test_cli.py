"""The msam command as a user meets it: in a fresh process, piped, with TensorFlow's start-up noise hidden."""

import json
import os
import subprocess
import sys

import pytest

from recipes import cli

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STARTUP_NOISE = ("absl::InitializeLog", "cuInit", "cudart_stub", "cpu_feature_guard", "I0000", "E0000", "W0000")


def _run(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**environment, **(env or {})})


@pytest.mark.slow
def test_a_run_piped_shows_no_startup_noise_and_a_few_progress_lines(tmp_path):
    done = _run("-m", "recipes.diag_nets", "run", "--steps", "100", "--progress", "--json")
    assert done.returncode == 0, done.stderr
    assert not [line for line in done.stderr.splitlines() if any(s in line for s in STARTUP_NOISE)], done.stderr
    assert 1 <= len(done.stderr.splitlines()) <= 6 and "\r" not in done.stderr  # 0, 25, 50, 75, 100 %
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["method"] == "1-sam" and result["steps"] == 100 and len(result["curve"]["steps"]) == 100


@pytest.mark.slow
def test_python_m_recipes_is_the_msam_command_and_a_bad_value_is_a_usage_error():
    done = _run("-m", "recipes", "relu_1d", "--rho", "-1")
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == "msam relu_1d: error: rho must be >= 0 (0 is ERM); got rho=-1.0."
    assert "Traceback" not in done.stderr
    done = _run("-m", "recipes", "--help")
    assert done.returncode == 0 and "diag_nets, relu_1d, large_step_sgd, resnet, tune" in done.stdout


def test_an_import_error_of_tensorflow_still_surfaces(tmp_path):
    (tmp_path / "tensorflow.py").write_text("raise ImportError('tensorflow is broken here')\n")
    done = _run("-c", "import recipes", env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert done.returncode == 1 and "ImportError: tensorflow is broken here" in done.stderr


def test_unknown_recipe_and_no_arguments(capsys):
    assert cli.main(["nope"]) == 2
    assert "msam: error: unknown recipe 'nope'; valid recipes: diag_nets" in capsys.readouterr().err
    assert cli.main([]) == 2 and "usage: msam RECIPE" in capsys.readouterr().err


@pytest.mark.parametrize("recipe", list(cli.RECIPES))
def test_every_recipe_has_help(capsys, recipe):
    with pytest.raises(SystemExit) as exit_info:
        cli.main([recipe, "--help"])
    assert exit_info.value.code == 0 and f"usage: msam {recipe}" in capsys.readouterr().out
