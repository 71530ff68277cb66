"""Constants dataclass -> flags: names, types, bools, help from the trailing comments, paths, one-line errors."""
import os
from dataclasses import dataclass, fields

import pytest

from r1_sft.cli import (
    UserError,
    build_parser,
    cli_main,
    format_config,
    is_path_field,
    name_field,
    parse_config,
    path_field,
)


@dataclass
class Config:
    input: str = "dataset/x.jsonl"  # records to read
    val_ratio: float = 0.1  # fraction for validation
    seed: int = 42  # split seed
    use_4bit: bool = True  # NF4 quantization
    dry_run: bool = False  # encode only
    max_steps: int | None = None  # stop after this many steps


def test_defaults_and_overrides_from_the_same_names():
    cfg = parse_config(Config, ["--val_ratio", "0.25", "--seed", "7"], quiet=True)
    assert (cfg.val_ratio, cfg.seed) == (0.25, 7)
    assert parse_config(Config, [], quiet=True) == Config()


def test_bool_flags():
    assert parse_config(Config, ["--dry_run"], quiet=True).dry_run is True
    assert parse_config(Config, ["--no_use_4bit"], quiet=True).use_4bit is False
    assert parse_config(Config, ["--no_dry_run"], quiet=True).dry_run is False


def test_a_bool_flag_given_a_value_says_how_to_write_it(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_config(Config, ["--use_4bit", "false"], quiet=True)
    assert exc.value.code == 2
    assert "--use_4bit takes no value: write --use_4bit or --no_use_4bit" in capsys.readouterr().err


def test_optional_values():
    assert parse_config(Config, ["--max_steps", "5"], quiet=True).max_steps == 5
    assert parse_config(Config, ["--max_steps", "none"], quiet=True).max_steps is None


def test_help_comes_from_the_trailing_comments_and_lists_both_bool_forms():
    text = build_parser(Config).format_help()
    assert "fraction for validation" in text and "NF4 quantization" in text
    assert "--use_4bit, --no_use_4bit" in text and "[--use_4bit | --no_use_4bit]" in text
    assert "USE_4BIT" not in text and "DRY_RUN" not in text


def test_resolved_config_prints_one_aligned_field_per_line(capsys):
    parse_config(Config, ["--seed", "7"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[config]" and len(lines) == 1 + len(fields(Config))
    assert "  seed      = 7" in lines and "  val_ratio = 0.1" in lines
    assert len({line.index("=") for line in lines[1:]}) == 1  # one column for every "="
    assert format_config(Config()).splitlines()[1] == "  input     = 'dataset/x.jsonl'"


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


# ---------------------------------------------------------------- paths

@dataclass
class StageConfig:
    """The str fields of the project's stage scripts, by kind (names as they are in the scripts)."""

    # paths (by name)
    input: str = "modelscope_r1_data/r1_data_example.jsonl"  # data stages
    output: str = "dataset/out.jsonl"  # data stages, bench, teacher generation
    input_dir: str = "r1_generated"  # teacher merge
    output_dir: str = "model/lora"  # training, merge, evaluation, splits
    local_dir: str = ""  # download
    model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # training, test_model, bench
    teacher_model_path: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-7B"  # distillation
    train_file: str = "dataset/sft_r1_train.jsonl"  # training
    output_file: str = ""  # test_model
    conversations_dir: str = "conversations"  # chat
    base_model: str = "model/deepseek_ai/DeepSeek-R1-Distill-Qwen-1.5B"  # evaluation, compare
    adapter: str = "model/lora/best_model"  # evaluation, compare, merge
    data: str = "dataset/sft_r1_val.jsonl"  # evaluation, bench
    score: str = ""  # evaluation --score FILE
    deepspeed: str = ""  # training
    questions: str = "r1_generated/questions.jsonl"  # teacher generation
    # paths by marker
    folder: str = path_field("")  # chat --model
    # never paths
    split_train_file: str = name_field("train.jsonl")  # a file name inside output_dir (split scripts)
    model: str = "deepseek-reasoner"  # teacher generation: an API model name
    model_id: str = "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B"  # download
    source: str = "modelscope"  # download
    revision: str = ""  # download
    pattern: str = "0*.jsonl"  # teacher merge
    lora_target_modules: str = "all-linear"  # training
    lr_scheduler_type: str = "cosine"  # training
    task: str = "sft"  # evaluation
    backend: str = "hf"  # evaluation
    run_name: str = ""  # evaluation (a subfolder name)
    dtype: str = "auto"  # merge
    question: str = ""  # compare
    once: str = ""  # chat
    base_url: str = "https://api.deepseek.com"  # teacher generation
    api_key_env: str = "DEEPSEEK_API_KEY"  # teacher generation
    sizes: str = "10000,100000"  # bench
    limit_file: int = 3  # an int, whatever its name


PATHS = {"input", "output", "input_dir", "output_dir", "local_dir", "model_path", "teacher_model_path", "train_file",
         "output_file", "conversations_dir", "base_model", "adapter", "data", "score", "deepspeed", "questions",
         "folder"}


def test_which_fields_are_paths():
    assert {f.name for f in fields(StageConfig) if is_path_field(f)} == PATHS | {"limit_file"}  # by name
    built = build_parser(StageConfig)
    resolved = {a.dest for a in built._actions if type(a).__name__ == "_PathAction"}
    assert resolved == PATHS  # only str fields are resolved


def test_typed_paths_resolve_from_the_current_folder_defaults_stay_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = []
    for name in sorted(PATHS):
        argv += [f"--{name}", f"sub/{name}.x"]
    keep = {"split_train_file": "t.jsonl", "model": "deepseek-chat", "model_id": "org/name", "source": "hf",
            "pattern": "*.jsonl", "lora_target_modules": "q_proj,v_proj", "run_name": "demo", "question": "a/b",
            "base_url": "http://127.0.0.1:8000/v1"}
    for name, value in keep.items():
        argv += [f"--{name}", value]
    cfg = parse_config(StageConfig, argv, quiet=True)
    for name in PATHS:
        assert getattr(cfg, name) == str(tmp_path / "sub" / f"{name}.x"), name
    for name, value in keep.items():
        assert getattr(cfg, name) == value, name
    # Not typed: the default as written (scripts resolve it from the repository root).
    assert parse_config(StageConfig, [], quiet=True) == StageConfig()


def test_path_edge_cases(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert parse_config(StageConfig, ["--adapter", ""], quiet=True).adapter == ""  # "" = base only
    assert parse_config(StageConfig, ["--input", "/abs/x.jsonl"], quiet=True).input == "/abs/x.jsonl"
    assert parse_config(StageConfig, ["--input", "../x.jsonl"], quiet=True).input == str(tmp_path.parent / "x.jsonl")
    assert parse_config(StageConfig, ["--input=~/x.jsonl"], quiet=True).input == os.path.expanduser("~/x.jsonl")
    # The value given equal to the default still counts as typed: it resolves from here.
    assert parse_config(StageConfig, ["--data", StageConfig.data], quiet=True).data == str(tmp_path / StageConfig.data)


@dataclass
class AutoConfig:
    use_4bit: bool | str = "auto"  # 4-bit: auto decides by the memory estimate
    seed: int = 1  # a seed


def test_a_switch_with_auto_keeps_both_flags_and_takes_auto(capsys):
    assert parse_config(AutoConfig, [], quiet=True).use_4bit == "auto"
    assert parse_config(AutoConfig, ["--use_4bit"], quiet=True).use_4bit is True
    assert parse_config(AutoConfig, ["--use_4bit", "--seed", "3"], quiet=True) == AutoConfig(True, 3)
    assert parse_config(AutoConfig, ["--no_use_4bit"], quiet=True).use_4bit is False
    assert parse_config(AutoConfig, ["--no_use_4bit", "--use_4bit", "auto"], quiet=True).use_4bit == "auto"
    with pytest.raises(SystemExit):
        parse_config(AutoConfig, ["--use_4bit", "false"], quiet=True)
    assert "write --use_4bit, --no_use_4bit or --use_4bit auto" in capsys.readouterr().err
    assert "auto decides by the memory estimate" in build_parser(AutoConfig).format_help()
