"""`msam RECIPE [EXPERIMENT] [--variant NAME] [--field value ...]`: the one command line of the recipes.

    msam diag_nets                                   # the rho grid into results/diag_nets (the main job)
    msam diag_nets run --method 1-sam --rho 0.2 --json
    msam relu_1d --seeds 0 1
    msam large_step_sgd teacher_student --steps 1000
    msam resnet --dataset synthetic --model tiny --epochs 2 --batch-size 32 --m 8 --steps-per-epoch 5
    msam tune diag_nets --max-trials 5

`python -m recipes ...` is the same command, and `python -m recipes.RECIPE ...` the same as
`msam RECIPE ...`. A recipe module provides `EXPERIMENTS` (name -> `recipes.config.Experiment`) and
`DEFAULT_EXPERIMENT`; its flags are generated from the experiment's config dataclass
(`msam RECIPE [EXPERIMENT] --help`). A bad value exits like argparse (`msam RECIPE: error: ...`, status 2);
a dataset that is not there exits with its message and status 1.
"""

import importlib
import sys

from recipes.config import SettingError, parse_command_line

RECIPES = {
    "diag_nets": "recipes.diag_nets",
    "relu_1d": "recipes.relu_1d",
    "large_step_sgd": "recipes.large_step_sgd",
    "resnet": "recipes.resnet",
    "tune": "recipes.tune",
    "fashion_mnist": "recipes.fashion_mnist",
}
USAGE = f"usage: msam RECIPE [EXPERIMENT] [--field value ...]   (recipes: {', '.join(RECIPES)}; msam RECIPE --help)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in RECIPES:
        print(f"{USAGE}\nmsam: error: unknown recipe {name!r}; valid recipes: {', '.join(RECIPES)}.", file=sys.stderr)
        return 2
    module = importlib.import_module(RECIPES[name])
    prog = f"msam {name}"
    experiment, config = parse_command_line(prog, module.EXPERIMENTS, module.DEFAULT_EXPERIMENT, rest,
                                            description=module.__doc__ or "")
    from recipes.tasks.images import DatasetUnavailableError

    try:
        module.EXPERIMENTS[experiment].run(config)
    except SettingError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 2
    except DatasetUnavailableError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
