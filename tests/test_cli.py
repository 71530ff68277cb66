"""Constants dataclass -> flags: names, types, bools, help from the trailing comments, one-line errors."""
from dataclasses import dataclass

import pytest

from r1_sft.cli import UserError, build_parser, cli_main, parse_config


@dataclass
class Config:
    input: str = "dataset/x.jsonl"  # records to read (path from the repo root)
    val_ratio: float = 0.1  # fraction for validation
    seed: int = 42  # split seed
    use_4bit: bool = True  # NF4 quantization
    dry_run: bool = False  # encode only
    max_steps: int | None = None  # stop after this many steps


def test_defaults_and_overrides_from_the_same_names():
    cfg = parse_config(Config, ["--val_ratio", "0.25", "--seed", "7", "--input", "a.jsonl"], quiet=True)
    assert (cfg.val_ratio, cfg.seed, cfg.input) == (0.25, 7, "a.jsonl")
    assert parse_config(Config, [], quiet=True) == Config()


def test_bool_flags():
    assert parse_config(Config, ["--dry_run"], quiet=True).dry_run is True
    assert parse_config(Config, ["--no_use_4bit"], quiet=True).use_4bit is False
    assert parse_config(Config, ["--use_4bit", "false"], quiet=True).use_4bit is False


def test_optional_values():
    assert parse_config(Config, ["--max_steps", "5"], quiet=True).max_steps == 5
    assert parse_config(Config, ["--max_steps", "none"], quiet=True).max_steps is None


def test_help_comes_from_the_trailing_comments():
    text = build_parser(Config).format_help()
    assert "fraction for validation" in text and "NF4 quantization" in text


def test_bad_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--seed", "abc"], quiet=True)
    assert exc.value.code == 2
    assert "--seed" in capsys.readouterr().err


def test_user_error_is_one_line_and_exit_2(capsys):
    @cli_main
    def main():
        raise UserError("dataset/x.jsonl:3: not valid JSON (fix the line)")

    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: dataset/x.jsonl:3: not valid JSON (fix the line)\n"
