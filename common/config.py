"""Command-line options from a config dataclass of commented defaults (nanoGPT style).

    @dataclass
    class Config:
        epochs: int = 40  # passes over the data
        lr: float = 1e-3  # peak learning rate; a comment may go on
        #                   on lines of their own, indented past the '#'

    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    add_config_args(p, Config)
    cfg = Config(**vars(p.parse_args()))

Every field becomes ``--field-name`` with the field's type and default, and the comment beside it (with its
continuation lines) as its ``--help`` text. Booleans get ``--flag`` / ``--no-flag``. Standard library only.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import typing

_FIELD = re.compile(r"^\s+(\w+)\s*:[^#]*?(?:#\s?(.*))?$")  # "    name: type = default  # comment"
_MORE = re.compile(r"^\s+#\s{2,}(\S.*)$")  # "    #        more of the comment above"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each option's default, except an empty one (None, "", [], ()) and one the help text already
    states ("(default: ...)"): argparse's own formatter prints ``(default: )`` and a second default for those."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default, help_ = action.default, action.help or ""
        empty = default is None or (isinstance(default, (str, list, tuple)) and len(default) == 0)
        if empty or "(default:" in help_:
            return help_
        return super()._get_help_string(action)


def field_comments(config_cls) -> dict[str, str]:
    """``{field name: its comment}`` read from the class source: the comment beside the field and the comment-only
    lines right below it (indented past their '#')."""
    comments, name = {}, None
    for line in inspect.getsource(config_cls).splitlines()[1:]:
        if line.lstrip().startswith(("def ", "@")):  # the fields come before the methods
            break
        more = _MORE.match(line)
        if more and name:
            comments[name] = f"{comments[name]} {more.group(1).strip()}".strip()
            continue
        m = _FIELD.match(line)
        name = m.group(1) if m else None
        if name:
            comments[name] = (m.group(2) or "").strip()
    return comments


def add_config_args(parser: argparse.ArgumentParser, config_cls, choices: dict[str, list] | None = None) -> None:
    """One option per field of the dataclass ``config_cls`` (bool, int, float or str); ``choices``: allowed values
    of some fields."""
    comments, choices = field_comments(config_cls), choices or {}
    types = typing.get_type_hints(config_cls)  # real classes, also under `from __future__ import annotations`
    for f in dataclasses.fields(config_cls):
        flag, help_, typ = "--" + f.name.replace("_", "-"), comments.get(f.name, "").replace("%", "%%"), types[f.name]
        if typ is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_)
        elif typ in (int, float, str):
            parser.add_argument(flag, type=typ, default=f.default, choices=choices.get(f.name), help=help_)
        else:
            raise TypeError(f"{config_cls.__name__}.{f.name}: type {typ} has no command-line form "
                            "(bool, int, float, str)")


def resumed_config(cfg, saved: dict, may_change) -> tuple[typing.Any, list[tuple[str, typing.Any, typing.Any]]]:
    """The config a resumed run continues with: ``saved`` (the run's own, from its checkpoint) for every field of
    the dataclass ``cfg`` it holds, except the fields in ``may_change``, which come from ``cfg`` (the command
    line). Also ``[(field, saved value, command-line value)]`` for the saved values that differ, to report."""
    kept = {f.name: saved[f.name] for f in dataclasses.fields(cfg) if f.name not in may_change and f.name in saved}
    overridden = [(name, value, getattr(cfg, name)) for name, value in kept.items() if value != getattr(cfg, name)]
    return dataclasses.replace(cfg, **kept), overridden
