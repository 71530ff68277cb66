"""Constants dataclass -> command-line flags of the same names, and one-line user errors.

A stage script ends with::

    @cli_main
    def main(cfg: Config): ...

    if __name__ == "__main__":
        main(parse_config(Config))

Every field becomes ``--name VALUE``; a bool field becomes the pair ``--name`` / ``--no_name``; a
``bool | str`` field the same pair plus ``--name auto`` (the run decides). The
trailing comment of each field is its ``--help`` text, so each name and its meaning are written
once. Plain argparse: no heavy import just to read flags.

Paths. A path typed on the command line resolves from the current folder, as in every command-line
tool: ``parse_config`` makes it absolute before the script sees it. A default written in the
constants stays as written, and scripts resolve it from the repository root (``paths.repo_path``),
so ``python data/generated_converted_data.py`` does the same from any folder. A str field is a path
when

* its metadata says so: ``field: str = path_field("...")`` (a path) or ``name_field("...")`` (never
  a path, e.g. a file name that lives inside another folder field); otherwise, by its name,
* it ends in ``_path``, ``_dir``, ``_file`` or ``_folder``, or it is one of ``PATH_NAMES``
  (``input``, ``output``, ``data``, ``adapter``, ``base_model``, ``questions``, ``score``,
  ``deepspeed``, ``fsdp_config``).

``model`` is deliberately not in the list: it names a folder in the chat but an API model
(``deepseek-reasoner``) elsewhere, so a script whose ``model`` is a folder says ``path_field``.
Empty values (``""`` = "none" / "the default") and ``none`` are never touched; ``~`` is expanded.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import os
import sys
import tokenize
import types
import typing
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

# Field names that hold a path (besides the suffixes below). See the module docstring.
PATH_NAMES = frozenset({"input", "output", "data", "adapter", "base_model", "questions", "score", "deepspeed",
                        "fsdp_config"})
PATH_SUFFIXES = ("_path", "_dir", "_file", "_folder")
_PATH_KEY = "path"  # dataclass field metadata: True = a path, False = never a path


class UserError(Exception):
    """A mistake the user can fix (bad path, bad record, missing model): shown as one line, exit 2."""


def path_field(default: str = ""):
    """A str field whose typed value is a path (resolved from the current folder) whatever its name."""
    return dataclasses.field(default=default, metadata={_PATH_KEY: True})


def name_field(default: str = ""):
    """A str field that is never resolved as a path, whatever its name (e.g. a file name inside another folder)."""
    return dataclasses.field(default=default, metadata={_PATH_KEY: False})


def is_path_field(field: dataclasses.Field) -> bool:
    """The rule of the module docstring: metadata first, then the name."""
    if _PATH_KEY in field.metadata:
        return bool(field.metadata[_PATH_KEY])
    return field.name in PATH_NAMES or field.name.endswith(PATH_SUFFIXES)


def typed_path(text: str) -> str:
    """A path typed on the command line, made absolute from the current folder ("" stays "")."""
    if not text:
        return text
    return os.path.abspath(os.path.expanduser(text))


class _PathAction(argparse.Action):
    """Stores a typed path made absolute. Only typed values pass here: defaults stay as written."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, typed_path(values) if isinstance(values, str) else values)


class _BoolAction(argparse.Action):
    """``--name`` sets True, ``--no_name`` sets False; ``--help`` and the usage line show both."""

    def __init__(self, option_strings, dest, default=None, help=None):
        super().__init__(option_strings, dest, nargs=0, default=default, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, not option_string.startswith("--no_"))

    def format_usage(self) -> str:
        return " | ".join(self.option_strings)


class _AutoSwitchAction(_BoolAction):
    """A switch with a third value: ``--name`` True, ``--no_name`` False, ``--name auto`` "auto" (decided by the run)."""

    def __init__(self, option_strings, dest, default=None, help=None):
        argparse.Action.__init__(self, option_strings, dest, nargs="?", const=True, default=default, help=help,
                                 metavar="auto")

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no_"):
            if values is not True:  # nargs="?": True (const) when nothing followed
                parser.error(f"{option_string} takes no value")
            setattr(namespace, self.dest, False)
        elif values is None or values is True:
            setattr(namespace, self.dest, True)
        elif values == "auto":
            setattr(namespace, self.dest, "auto")
        else:
            on, off = self.option_strings
            parser.error(f"{option_string} {values!r}: write {on}, {off} or {on} auto")

    def format_usage(self) -> str:
        on, off = self.option_strings
        return f"{on} [auto] | {off}"


_BOOL_WORDS = {"1", "0", "true", "false", "yes", "no", "y", "n", "on", "off"}


def _bool_value_hint(parser: argparse.ArgumentParser, argv: list[str], extra: list[str]) -> str:
    """For ``--use_4bit false``: say that a true/false setting is a flag pair and takes no value."""
    for before, word in zip(argv, argv[1:]):
        action = parser._option_string_actions.get(before)
        if isinstance(action, _BoolAction) and word in extra and word.lower() in _BOOL_WORDS:
            on, off = action.option_strings
            return f" ({before} takes no value: write {on} or {off})"
    return ""


def _field_comments(config_cls: type) -> dict[str, str]:
    """``name: type = value  # comment`` -> {name: comment}, for the class and its dataclass bases."""
    comments: dict[str, str] = {}
    for klass in reversed(config_cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        line_names: dict[int, str] = {}
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.NAME and tok.start[1] == 4 and tok.start[0] not in line_names:
                line_names[tok.start[0]] = tok.string
            elif tok.type == tokenize.COMMENT and tok.start[0] in line_names:
                comments[line_names[tok.start[0]]] = tok.string.lstrip("# ").strip()
    return comments


def _is_auto_switch(annotation) -> bool:
    """``bool | str``: a flag pair that also takes ``auto`` (e.g. ``--use_4bit auto``)."""
    return typing.get_origin(annotation) in (typing.Union, types.UnionType) and \
        set(typing.get_args(annotation)) == {bool, str}


def _converter(annotation) -> tuple[Callable[[str], object] | None, type]:
    """The string -> value function for a field type (None for bool: a flag pair), and the base type."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = len(args) < len(typing.get_args(annotation)), args[0]
    if annotation is bool:
        return None, bool
    base = annotation if annotation in (int, float, str) else str

    def convert(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        return base(text)

    convert.__name__ = base.__name__  # argparse names the type in its error messages
    return convert, base


def build_parser(config_cls: type) -> argparse.ArgumentParser:
    doc = (inspect.getdoc(sys.modules[config_cls.__module__]) or "").strip()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    comments = _field_comments(config_cls)
    for field in dataclasses.fields(config_cls):
        convert, base = _converter(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = comments.get(field.name, "")
        if _is_auto_switch(hints[field.name]):
            parser.add_argument(f"--{field.name}", f"--no_{field.name}", dest=field.name, action=_AutoSwitchAction,
                                default=default, help=help_text)
        elif base is bool:
            parser.add_argument(f"--{field.name}", f"--no_{field.name}", dest=field.name, action=_BoolAction,
                                default=default, help=help_text)
        elif base is str and is_path_field(field):
            parser.add_argument(f"--{field.name}", type=convert, default=default, help=help_text,
                                action=_PathAction)
        else:
            parser.add_argument(f"--{field.name}", type=convert, default=default, help=help_text)
    return parser


def format_config(cfg) -> str:
    """The resolved values as an aligned block, one field per line (what ``parse_config`` prints)."""
    fields = dataclasses.fields(cfg)
    width = max((len(f.name) for f in fields), default=0)
    return "\n".join(["[config]"] + [f"  {f.name:<{width}} = {getattr(cfg, f.name)!r}" for f in fields])


def parse_config(config_cls: type[T], argv: Sequence[str] | None = None, quiet: bool = False) -> T:
    """Parse ``--name value`` flags named after the dataclass fields; print the resolved values.

    Typed paths come back absolute (from the current folder); see the module docstring.
    """
    parser = build_parser(config_cls)
    argv = list(argv) if argv is not None else sys.argv[1:]
    args, extra = parser.parse_known_args(argv)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}{_bool_value_hint(parser, argv, extra)}")
    cfg = config_cls(**vars(args))
    if not quiet:
        print(format_config(cfg), flush=True)
    return cfg


def cli_main(main: Callable[..., T]) -> Callable[..., T]:
    """Turn UserError into ``error: <message>`` on stderr and exit code 2, without a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    return wrapper
