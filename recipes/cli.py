"""`msam-train SUBCOMMAND [args]`: one console script for the training recipes.

    msam-train resnet --dataset cifar10 --model resnet18 --rho 0.1 --m 16

Each subcommand is a module with `main(argv=None)`; its `--help` lists the options.
"""

import importlib
import sys

SUBCOMMANDS = {"resnet": "recipes.resnet"}


def _usage():
    names = ", ".join(sorted(SUBCOMMANDS))
    return f"usage: msam-train SUBCOMMAND [options]   (subcommands: {names}; `msam-train SUBCOMMAND --help`)"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"msam-train: unknown subcommand {name!r}; valid: {sorted(SUBCOMMANDS)}.\n{_usage()}", file=sys.stderr)
        return 2
    return importlib.import_module(SUBCOMMANDS[name]).main(rest)


if __name__ == "__main__":
    raise SystemExit(main())
