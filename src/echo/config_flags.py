"""Command-line flags derived from config dataclasses: one option per field, its default the field's own.

A subcommand names the fields it exposes in a table of ``Flag`` (help text, argparse type, option name when it is
not ``--field-name``); the option's default is read from the dataclass, so a changed default changes the CLI with
it, and ``config_kwargs`` turns the parsed namespace back into the dataclass's keyword arguments.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

_SCALARS = {"int": int, "float": float, "str": str}


@dataclass(frozen=True, slots=True)
class Flag:
    """How one config field appears on the command line. ``convert`` maps the parsed value to the field's value
    (a list of choices to a tuple, 0 to None); ``group`` puts flags sharing the name in one mutually exclusive
    group."""

    help: str | None = None
    type: Callable[[str], Any] | None = None
    option: str | None = None
    metavar: str | tuple[str, ...] | None = None
    choices: Sequence[Any] | None = None
    nargs: int | str | None = None
    convert: Callable[[Any], Any] | None = None
    group: str | None = None


def add_config_flags(parser: argparse.ArgumentParser, cls: type, flags: dict[str, Flag]) -> None:
    """Add an option for every field of dataclass ``cls`` named in ``flags``, in ``flags``' order. A bool field
    becomes a switch (``--x``; with ``--no-x`` too when it defaults to True); a field without a default becomes a
    required option."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [name for name in flags if name not in fields]
    if unknown:
        raise ValueError(f"{cls.__name__} has no fields {unknown}")
    groups: dict[str, Any] = {}
    for name, flag in flags.items():
        field = fields[name]
        target = parser
        if flag.group is not None:
            if flag.group not in groups:
                groups[flag.group] = parser.add_mutually_exclusive_group()
            target = groups[flag.group]
        option = flag.option or "--" + name.replace("_", "-")
        kw: dict[str, Any] = dict(dest=name, help=flag.help)
        if field.default is not dataclasses.MISSING:
            kw["default"] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            kw["default"] = field.default_factory()
        else:
            kw["required"] = True
        annotation = str(field.type).replace(" | None", "")
        if annotation == "bool":  # a switch; one on by default also gets its --no- form
            action = argparse.BooleanOptionalAction if kw.get("default") is True else "store_true"
            target.add_argument(option, action=action, **kw)
            continue
        if isinstance(kw.get("default"), tuple):  # shown and appended to as argparse shows lists
            kw["default"] = list(kw["default"])
        kw.update((k, v) for k, v in (("metavar", flag.metavar), ("choices", flag.choices), ("nargs", flag.nargs))
                  if v is not None)
        kw["type"] = flag.type or _SCALARS.get(annotation, str)
        target.add_argument(option, **kw)


def config_kwargs(args: argparse.Namespace, flags: dict[str, Flag]) -> dict[str, Any]:
    """The parsed values of the fields in ``flags``, converted to the field's form, ready for ``cls(**kwargs)``."""
    out = {}
    for name, flag in flags.items():
        value = getattr(args, name)
        out[name] = flag.convert(value) if flag.convert is not None else value
    return out
