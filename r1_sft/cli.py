"""Constants dataclass -> command-line flags of the same names, and one-line user errors.

A stage script ends with::

    @cli_main
    def main(cfg: Config): ...

    if __name__ == "__main__":
        main(parse_config(Config))

Every field becomes ``--name VALUE``; a bool field becomes ``--name`` / ``--no_name`` (``--name false``
works too). The trailing comment of each field is its ``--help`` text, so each name and its meaning
are written once. Plain argparse: no heavy import just to read flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import sys
import tokenize
import types
import typing
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad path, bad record, missing model): shown as one line, exit 2."""


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


def _str_to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "y", "on"):
        return True
    if value in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _converter(annotation) -> tuple[Callable[[str], object], bool]:
    """The string -> value function for a field type, and whether the type is bool."""
    optional = False
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = len(args) < len(typing.get_args(annotation)), args[0]
    if annotation is bool:
        return _str_to_bool, True
    base = annotation if annotation in (int, float, str) else str

    def convert(text: str):
        if optional and text.strip().lower() in ("none", "null", ""):
            return None
        return base(text)

    convert.__name__ = base.__name__  # argparse names the type in its error messages
    return convert, False


def build_parser(config_cls: type) -> argparse.ArgumentParser:
    doc = (inspect.getdoc(sys.modules[config_cls.__module__]) or "").strip()
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None,
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    hints = typing.get_type_hints(config_cls)
    comments = _field_comments(config_cls)
    for field in dataclasses.fields(config_cls):
        convert, is_bool = _converter(hints[field.name])
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        help_text = comments.get(field.name, "")
        if is_bool:
            parser.add_argument(f"--{field.name}", type=_str_to_bool, nargs="?", const=True,
                                default=default, help=help_text)
            parser.add_argument(f"--no_{field.name}", dest=field.name, action="store_false",
                                help=argparse.SUPPRESS)
        else:
            parser.add_argument(f"--{field.name}", type=convert, default=default, help=help_text)
    return parser


def parse_config(config_cls: type[T], argv: Sequence[str] | None = None, quiet: bool = False) -> T:
    """Parse ``--name value`` flags named after the dataclass fields; print the resolved values."""
    args = build_parser(config_cls).parse_args(list(argv) if argv is not None else None)
    cfg = config_cls(**vars(args))
    if not quiet:
        fields = ", ".join(f"{f.name}={getattr(cfg, f.name)!r}" for f in dataclasses.fields(cfg))
        print(f"[config] {fields}", flush=True)
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
