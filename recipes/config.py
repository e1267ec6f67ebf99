"""Recipe settings: dataclasses that hold every default once, and the command line generated from them.

A recipe declares its settings as a dataclass whose fields are `setting(default, help, ...)`, and its
experiments as `Experiment(run, config, defaults, variants)`: `run(config)` does the work, `defaults`
are the experiment's own values for some fields, and `variants` are named sets of further overrides
(big_vision style: e.g. the papers' settings as the defaults and a CPU-sized variant).

A config is resolved in this order, each step overriding the previous one:
    dataclass defaults < experiment defaults < variant < explicit values (keyword arguments, flags)
and then checked by its `check()` method, if it has one.

The command line of an experiment is generated from its dataclass: field `name` -> `--name` (underscores
as dashes), the type and default from the field, the help from `setting(help=...)`; bools are
`--name / --no-name`; tuples take several values (`nargs`). `--variant NAME` selects a variant.
"""

import argparse
import contextlib
import dataclasses
import typing

VARIANT_FLAG = "--variant"


def setting(default, help, **argparse_options):
    """A config field with its default and help; `argparse_options` (choices, metavar, nargs, type) go to
    the generated command-line flag."""
    return dataclasses.field(default=default, metadata={"help": help, **argparse_options})


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of a recipe: `run(config)` on a `config` dataclass with this experiment's defaults."""

    run: typing.Callable
    config: type
    defaults: dict = dataclasses.field(default_factory=dict)
    variants: dict = dataclasses.field(default_factory=dict)
    help: str = ""


class SettingError(ValueError):
    """A bad setting, found by a check before the work starts: the CLI reports it as a usage error."""


@contextlib.contextmanager
def checking_settings():
    """Inside the block, a ValueError (from `check()`, or a library constructor given a bad value) is a
    `SettingError`: the CLI prints it like argparse (`error: ...`, exit status 2) instead of a traceback."""
    try:
        yield
    except SettingError:
        raise
    except ValueError as error:
        raise SettingError(str(error)) from error


def field_names(config_class):
    return [f.name for f in dataclasses.fields(config_class)]


def make(experiment, variant=None, **overrides):
    """The checked config of `experiment` (see the module doc for the order of the overrides).

    Raises `SettingError` for an unknown variant, an unknown field or a value `check()` rejects.
    """
    with checking_settings():
        values = {**experiment.defaults, **_variant(experiment, variant), **overrides}
        unknown = sorted(set(values) - set(field_names(experiment.config)))
        if unknown:
            raise ValueError(
                f"unknown setting(s) {', '.join(unknown)} for {experiment.config.__name__}; "
                f"its settings are: {', '.join(field_names(experiment.config))}."
            )
        config = experiment.config(**values)
        if hasattr(config, "check"):
            config.check()
    return config


def to_dict(config):
    """The config's fields as a plain dict (for results files)."""
    return dataclasses.asdict(config)


def select(experiments, name, variant=None, **overrides):
    """`make(experiments[name], variant, **overrides)`, with an error listing the valid names."""
    if name not in experiments:
        raise SettingError(f"unknown experiment {name!r}; valid experiments: {', '.join(experiments)}.")
    return make(experiments[name], variant, **overrides)


# ------------------------------------------------------------------------------------------ command line
def parse_command_line(prog, experiments, default, argv, description=""):
    """(experiment name, checked config) from `[EXPERIMENT] [--variant NAME] [--field value ...]`.

    A bad flag, experiment, variant or value exits like argparse: `PROG: error: ...`, status 2.
    """
    argv = list(argv)
    name = default
    if argv and not argv[0].startswith("-"):
        name = argv.pop(0)
        if name not in experiments:
            _top_parser(prog, experiments, default, description).error(
                f"unknown experiment {name!r}; valid experiments: {', '.join(experiments)}."
            )
    experiment = experiments[name]
    variant = _peek_variant(argv) if experiment.variants else None
    if variant is not None and variant not in experiment.variants:
        _top_parser(prog, experiments, default, description).error(
            f"unknown variant {variant!r} of {name}; valid variants: {', '.join(experiment.variants)}."
        )
    parser = build_parser(f"{prog} {name}" if len(experiments) > 1 else prog, experiment, variant,
                          _listing(experiments, default, description))
    args = vars(parser.parse_args(argv))
    args.pop("variant", None)
    try:
        return name, make(experiment, variant, **_from_flags(experiment.config, args))
    except SettingError as error:
        parser.error(str(error))


def build_parser(prog, experiment, variant=None, description=""):
    """The argparse parser of `experiment`, its defaults resolved for `variant`."""
    with checking_settings():
        defaults = {**_class_defaults(experiment.config), **experiment.defaults, **_variant(experiment, variant)}
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    if experiment.variants:
        parser.add_argument(VARIANT_FLAG, choices=list(experiment.variants), default=variant,
                            help="named overrides of the defaults: " + "; ".join(
                                f"{k}: {_describe(v)}" for k, v in experiment.variants.items()))
    hints = typing.get_type_hints(experiment.config)
    for field in dataclasses.fields(experiment.config):
        parser.add_argument("--" + field.name.replace("_", "-"), dest=field.name,
                            **_flag_options(field, hints[field.name], defaults[field.name]))
    return parser


def _flag_options(field, hint, default):
    options = dict(field.metadata)
    help_text = options.pop("help", "")
    hint = _without_none(hint)
    if hint is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(hint) is tuple:
        element, *rest = typing.get_args(hint)
        options.setdefault("nargs", "+" if rest == [Ellipsis] else 1 + len(rest))
        options.setdefault("type", element)
    elif hint in (int, float, str):
        options.setdefault("type", hint)
    options["help"] = help_text.replace("%", "%%")
    return {"default": default, **options}


def _without_none(hint):
    if typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _from_flags(config_class, args):
    """Parsed flags as field values: lists from nargs become tuples."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items() if k in field_names(config_class)}


def _class_defaults(config_class):
    return {f.name: f.default for f in dataclasses.fields(config_class)}


def _variant(experiment, variant):
    if variant is None:
        return {}
    if variant not in experiment.variants:
        valid = ", ".join(experiment.variants) or "none"
        raise ValueError(f"unknown variant {variant!r}; valid variants: {valid}.")
    return experiment.variants[variant]


def _peek_variant(argv):
    """The value of --variant in argv (before the full parser exists: it sets that parser's defaults)."""
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument(VARIANT_FLAG)
    return peek.parse_known_args(argv)[0].variant


def _describe(overrides):
    return ", ".join(f"{k}={v}" for k, v in overrides.items())


def _listing(experiments, default, description):
    lines = [description, "", "experiments (the first argument; default: %s):" % default]
    lines += [f"  {name:<18} {experiment.help}" for name, experiment in experiments.items()]
    return "\n".join(lines).strip()


def _top_parser(prog, experiments, default, description):
    return argparse.ArgumentParser(prog=prog, description=_listing(experiments, default, description),
                                   formatter_class=_HelpFormatter)


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as written; every flag's help ends with its default."""
