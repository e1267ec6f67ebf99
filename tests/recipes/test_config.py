"""recipes.config: the command line generated from a config dataclass; experiments, variants, errors."""

import dataclasses
from typing import Optional

import pytest

from recipes import config
from recipes.config import Experiment, SettingError, setting


@dataclasses.dataclass
class ToyConfig:
    steps: int = setting(100, "steps")
    lr: float = setting(0.5, "step size")
    name: str = setting("a", "a name", choices=("a", "b"))
    normalize: bool = setting(True, "normalize")
    rhos: tuple[float, ...] = setting((0.1, 0.2), "rho grid")
    window: tuple[float, float] = setting((0.0, 1.0), "window", metavar=("START", "END"))
    m: Optional[int] = setting(None, "shard size")

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1; got steps={self.steps}.")


RAN = []
EXPERIMENTS = {
    "short": Experiment(RAN.append, ToyConfig, {"steps": 10}, variants={"long": {"steps": 1000, "lr": 0.1}},
                        help="a short run"),
    "other": Experiment(RAN.append, ToyConfig, help="the class defaults"),
}


def parse(argv):
    return config.parse_command_line("msam toy", EXPERIMENTS, "short", argv)


def test_flags_follow_the_fields():
    name, cfg = parse(["--lr", "0.25", "--name", "b", "--no-normalize", "--rhos", "1", "2", "3",
                       "--window", "0.5", "1", "--m", "4"])
    assert name == "short"
    assert cfg == ToyConfig(steps=10, lr=0.25, name="b", normalize=False, rhos=(1.0, 2.0, 3.0), window=(0.5, 1.0), m=4)
    assert parse(["other"])[1] == ToyConfig()


def test_precedence_class_then_experiment_then_variant_then_flags():
    assert parse([])[1].steps == 10
    assert (parse(["--variant", "long"])[1].steps, parse(["--variant", "long"])[1].lr) == (1000, 0.1)
    assert parse(["--variant", "long", "--steps", "5"])[1].steps == 5
    assert config.make(EXPERIMENTS["short"], "long", lr=0.3) == ToyConfig(steps=1000, lr=0.3)


def test_help_shows_the_resolved_defaults(capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(["--variant", "long", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # as one line, whatever the terminal width
    assert exit_info.value.code == 0
    assert "steps (default: 1000)" in out and "--normalize, --no-normalize" in out and "START END" in out
    assert "short" in out and "a short run" in out and "long: steps=1000, lr=0.1" in out


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "msam toy short: error: steps must be >= 1; got steps=0."),
    (["--name", "c"], "argument --name: invalid choice: 'c'"),
    (["--lr", "x"], "argument --lr: invalid float value: 'x'"),
    (["bogus"], "msam toy: error: unknown experiment 'bogus'; valid experiments: short, other."),
    (["--variant", "huge"], "unknown variant 'huge' of short; valid variants: long."),
])
def test_bad_values_exit_like_argparse(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_make_names_unknown_settings_and_checking_settings_marks_value_errors():
    with pytest.raises(SettingError, match="unknown setting.s. stpes for ToyConfig; its settings are: steps, lr"):
        config.make(EXPERIMENTS["short"], stpes=3)
    with pytest.raises(SettingError, match="bad value"):
        with config.checking_settings():
            raise ValueError("bad value")
    with pytest.raises(KeyError):  # only value errors are setting errors
        with config.checking_settings():
            raise KeyError("bug")
    assert config.to_dict(ToyConfig())["rhos"] == (0.1, 0.2)
