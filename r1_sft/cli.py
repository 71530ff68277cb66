"""Constants dataclass -> command-line flags of the same names, and one-line user errors.

A stage script ends with::

    @cli_main
    def main(cfg: Config): ...

    if __name__ == "__main__":
        main(parse_config(Config))
"""
from __future__ import annotations

import dataclasses
import functools
import sys
from typing import Callable, Sequence, TypeVar

from transformers import HfArgumentParser

T = TypeVar("T")


class UserError(Exception):
    """A mistake the user can fix (bad path, bad record, missing model): shown as one line, exit 2."""


def parse_config(config_cls: type[T], argv: Sequence[str] | None = None, quiet: bool = False) -> T:
    """Parse ``--name value`` flags named after the dataclass fields; print the resolved values."""
    parser = HfArgumentParser(config_cls)
    (cfg,) = parser.parse_args_into_dataclasses(args=list(argv) if argv is not None else None)
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
