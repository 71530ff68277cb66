"""The README and docs/ match the code: every --flag they name exists, every relative link resolves, and the
README keeps the seed's quick start verbatim on a page a newcomer reads in minutes.

Flags are read from the stage scripts' constants dataclasses (``class Config`` and its bases in r1_sft/)
by parsing the source, the rule r1_sft.cli follows to build --help: one flag per field, ``--no_NAME`` too
for a bool. Importing the training scripts would take ~20 s of library imports; parsing takes well under one.
A test checks the reader against the real parser on a script that is cheap to import. A script without a
``Config`` is asked for --help instead.
"""
from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SCRIPT_DIRS = ("data", "download_model", "scripts", "scripts/compare", "bench")

# Flags of other tools that the docs show in their own commands (not ours to define).
EXTERNAL_FLAGS = {
    # torchrun / accelerate launch
    "nproc_per_node", "nnodes", "node_rank", "master_addr", "master_port", "standalone",
    "multi_gpu", "num_processes", "cpu", "config_file", "rdzv_backend", "rdzv_endpoint", "rdzv_id",
    "num_machines", "machine_rank", "main_process_ip", "main_process_port",
    # vllm serve
    "reasoning-parser", "enable-reasoning", "dtype", "port", "api-key", "max-model-len", "tensor-parallel-size",
    "gpu-memory-utilization", "enable-lora", "lora-modules",
    # modelscope download, pip, pytest, docker run, tensorboard
    "repo-type", "local-dir", "dry-run", "index-url", "extra-index-url", "dist", "durations", "maxfail",
    "no-deps", "no-build-isolation", "force-reinstall", "ignore-installed",
    "network", "add-host", "logdir",
}
FLAG_RE = re.compile(r"(?<![\w-])--([A-Za-z][\w-]*)")
LINK_RE = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")

# The seed's quick start (shared/seed README): users know these commands, in this order.
SEED_COMMANDS = [
    "python data/generated_converted_data.py",
    "python data/generated_stf_r1_data.py",
    "python data/split_stf_r1_data.py",
    "python download_model/download_model.py",
    "python scripts/train_stf_r1_train_val.py",
    "python scripts/evaluate_model.py",
    "python scripts/chat_with_model.py",
]


def _config_fields(path: Path, class_name: str) -> dict[str, str]:
    """{field: annotation} of a dataclass in a source file, bases first (followed into r1_sft/ imports)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: dict[str, Path] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith("r1_sft")):
            folder = path.parent if node.level else REPO
            for alias in node.names:
                imported[alias.asname or alias.name] = folder / (node.module.replace(".", "/") + ".py")
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            fields: dict[str, str] = {}
            for base in node.bases:
                if isinstance(base, ast.Name):
                    fields |= _config_fields(imported.get(base.id, path), base.id)
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
                    fields[stmt.target.id] = ast.unparse(stmt.annotation)
            return fields
    return {}


def _flags_of(script: Path) -> set[str]:
    """The --flags a stage script accepts (without the leading dashes), as r1_sft.cli builds them."""
    fields = _config_fields(script, "Config")
    if not fields:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        return set(FLAG_RE.findall(out.stdout))
    flags = {"help"}
    for name, annotation in fields.items():
        flags |= {name, f"no_{name}"} if annotation in ("bool", "bool | str") else {name}  # bool | str: --name auto too
    return flags


def test_the_source_reader_agrees_with_the_real_parser():
    from r1_sft.cli import build_parser

    script = REPO / "data" / "split_stf_r1_data.py"
    spec = importlib.util.spec_from_file_location("docs_check_split", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["docs_check_split"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    real = {option.lstrip("-") for option in build_parser(module.Config)._option_string_actions} - {"h"}
    assert _flags_of(script) == real
    assert {"use_4bit", "no_use_4bit", "lora_r", "val_file"} <= _flags_of(REPO / "scripts" / "train_stf_r1_train_val.py")


@pytest.fixture(scope="module")
def script_flags() -> set[str]:
    flags: set[str] = set()
    for folder in SCRIPT_DIRS:
        for script in sorted((REPO / folder).glob("*.py")):
            if script.name != "__init__.py":
                flags |= _flags_of(script)
    return flags


def test_the_flag_reader_sees_real_flags_and_not_invented_ones(script_flags):
    assert {"test_ratio", "no_use_4bit", "use_teacher_logits", "max_concurrency", "help"} <= script_flags
    assert "no_such_flag" not in script_flags


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_flag_named_exists_in_some_stage_script(doc, script_flags):
    named = set(FLAG_RE.findall(doc.read_text(encoding="utf-8")))
    unknown = sorted(named - script_flags - EXTERNAL_FLAGS)
    assert not unknown, f"{doc.relative_to(REPO)} names flags no stage script has: {unknown}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file(doc):
    broken = []
    for target in LINK_RE.findall(doc.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:", "#")):
            continue
        if not (doc.parent / target.split("#")[0]).exists():
            broken.append(target)
    assert not broken, f"{doc.relative_to(REPO)}: links to missing files: {broken}"


def test_readme_is_short_starts_with_the_two_commands_and_keeps_the_seed_quick_start():
    text = (REPO / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) < 250
    first_screen = "\n".join(lines[:30])
    assert "make demo" in first_screen and "make test" in first_screen
    positions = [text.find("\n" + command + "\n") for command in SEED_COMMANDS]
    assert -1 not in positions, [c for c, p in zip(SEED_COMMANDS, positions) if p == -1]
    assert positions == sorted(positions)  # in the seed's order
    # Tables of defaults live in --help, not in the README.
    assert "| 参数 | 默认 |" not in text
    assert "--help" in text


# ----------------------------------------------------------------------------- words, defaults, paths

# Words about how the project was made (its machines, sessions, load), not about the user's run.
BANNED_WORDS = [
    r"本机", r"这台机器", r"开发机", r"机器很忙", r"负载约", r"2 核 AMD EPYC", r"本项目的会话",
    r"(?i)\bhere\b", r"(?i)\bsessions?\b", r"(?i)\blent\b", r"(?i)\bhelpers?\b", r"(?i)busy machine",
    r"(?i)development machines?", r"(?i)this machine", r"(?i)\bno GPU (?:here|in this)", r"64 MiB",
    r"(?i)\bcommit [0-9a-f]{7,40}\b",
]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_docs_speak_to_the_user_not_about_how_the_project_was_made(doc):
    hits = []
    for number, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
        hits += [f"line {number}: {match.group(0)!r}" for word in BANNED_WORDS for match in re.finditer(word, line)]
    assert not hits, f"{doc.relative_to(REPO)}: {hits}"


def test_the_words_check_catches_what_it_bans():
    for text in ("本机没有 GPU", "no GPU was lent to this project's sessions", "measured here", "2 核 AMD EPYC",
                 "from commit f147301"):
        assert any(re.search(word, text) for word in BANNED_WORDS), text
    assert not any(re.search(word, "在你的卡上运行：nvidia-smi、--use_4bit auto") for word in BANNED_WORDS)


# "`--flag value`（默认）", "`--flag`（默认 value）", "默认 `--flag value`": a default quoted in prose.
QUOTED_DEFAULT = [re.compile(r"`--(\w+) ([^`\s]+)`[（(]默认[）)：:，,]"),
                  re.compile(r"`--(\w+)`[（(]默认 ([^）)\s，,；`]+)"),
                  re.compile(r"默认\s*\**`--(\w+) ([^`\s]+)`")]
# Which scripts a page speaks for (README and the cross-cutting pages: any script with the flag).
PAGE_SCRIPTS = {
    "docs/training.md": ["scripts/train_stf_r1_train_val.py"], "docs/distillation.md": ["scripts/train_distill.py"],
    "docs/grpo.md": ["scripts/train_grpo.py"], "docs/teacher.md": ["data/generate_teacher_data.py"],
    "docs/data.md": ["data/split_stf_r1_data.py", "data/split_sft_train.py", "data/generated_converted_data.py",
                     "data/generated_teacher_filtered.py"],
    "docs/evaluation.md": ["scripts/evaluate_model.py"],
    "docs/chat_and_serving.md": ["scripts/chat_with_model.py", "scripts/serve_model.py"],
    "docs/model.md": ["download_model/download_model.py", "scripts/test_model.py"],
}


def _module_constant(path: Path, name: str):
    """A module-level ``NAME = <literal>`` in ``path`` (or in the r1_sft module it imports NAME from)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return ast.literal_eval(node.value)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("r1_sft") and \
                any((a.asname or a.name) == name for a in node.names):
            return _module_constant(REPO / (node.module.replace(".", "/") + ".py"), name)
    raise LookupError(name)


def _config_defaults(path: Path, class_name: str = "Config") -> dict[str, object]:
    """{field: default} of a constants dataclass (bases first), for literal or module-constant defaults."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: dict[str, Path] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and (node.level or node.module.startswith("r1_sft")):
            for alias in node.names:
                imported[alias.asname or alias.name] = (path.parent if node.level else REPO) / (
                    node.module.replace(".", "/") + ".py")
    defaults: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            for base in node.bases:
                if isinstance(base, ast.Name):
                    defaults |= _config_defaults(imported.get(base.id, path), base.id)
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name) and stmt.value is not None:
                    try:
                        value = ast.literal_eval(stmt.value)
                    except ValueError:
                        try:
                            value = _module_constant(path, stmt.value.id) if isinstance(stmt.value, ast.Name) else None
                        except LookupError:
                            value = None
                    if value is not None:
                        defaults[stmt.target.id] = value
    return defaults


def _same(quoted: str, default) -> bool:
    if isinstance(default, bool):
        return quoted.lower() == str(default).lower()
    if isinstance(default, (int, float)):
        try:
            return float(quoted.replace(",", "")) == float(default)
        except ValueError:
            return False
    return quoted.strip("'\"") == str(default)


@pytest.fixture(scope="module")
def script_defaults() -> dict[str, dict[str, object]]:
    return {str(script.relative_to(REPO)): _config_defaults(script)
            for folder in SCRIPT_DIRS for script in sorted((REPO / folder).glob("*.py")) if script.name != "__init__.py"}


def test_the_defaults_reader_sees_the_real_defaults(script_defaults):
    sft = script_defaults["scripts/train_stf_r1_train_val.py"]
    assert sft["use_4bit"] == "auto" and sft["eval_steps"] == 0 and sft["logging_steps"] == 10  # script and base
    assert script_defaults["scripts/evaluate_model.py"]["max_new_tokens"] == 4096  # a constant imported from r1_sft


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_defaults_quoted_in_the_docs_equal_the_scripts_defaults(doc, script_defaults):
    rel = str(doc.relative_to(REPO))
    text = doc.read_text(encoding="utf-8")
    wrong = []
    for pattern in QUOTED_DEFAULT:
        for flag, quoted in pattern.findall(text):
            own = [script_defaults[s] for s in PAGE_SCRIPTS.get(rel, []) if flag in script_defaults[s]]
            candidates = own or [d for d in script_defaults.values() if flag in d]
            if candidates and not any(_same(quoted, d[flag]) for d in candidates):
                wrong.append(f"--{flag} {quoted} (defaults: {sorted({str(d[flag]) for d in candidates})})")
    assert not wrong, f"{rel} quotes defaults that --help does not have: {wrong}"


def test_the_defaults_check_sees_a_wrong_default(script_defaults):
    text = "`--eval_steps 50`（默认）"
    flag, quoted = QUOTED_DEFAULT[0].findall(text)[0]
    assert not _same(quoted, script_defaults["scripts/train_stf_r1_train_val.py"][flag])


# Repository paths named in backticks: sources must exist; outputs must be written by a script default or a
# documented command (an --output_dir / --local_dir / --output value in the docs or the Makefile).
PATH_RE = re.compile(r"`((?:data|download_model|scripts|r1_sft|docs|bench|configs|tests|notebooks|model|dataset|"
                     r"modelscope_r1_data|r1_generated|mcq_data|conversations)/[^`\s]*)`")
OUTPUT_FLAGS = re.compile(r"--(?:output_dir|local_dir|output|local-dir|output_file)[ =]([^\s`\\]+)")


@pytest.fixture(scope="module")
def produced(script_defaults) -> set[str]:
    paths = {str(v) for d in script_defaults.values() for v in d.values() if isinstance(v, str) and v}
    for text in [doc.read_text(encoding="utf-8") for doc in DOCS] + [(REPO / "Makefile").read_text()]:
        paths |= set(OUTPUT_FLAGS.findall(text))
    for text in [doc.read_text(encoding="utf-8") for doc in DOCS]:  # download_model.py --model_id org/name
        paths |= {f"model/{org.replace('-', '_')}/{name}" for org, name in re.findall(r"--model_id ([\w.-]+)/([\w.-]+)", text)}
    for shell in sorted((REPO / "bench").glob("*.sh")):  # what the bench scripts write (bench/results/...)
        paths |= set(re.findall(r"bench/results/[\w.]+", shell.read_text(encoding="utf-8")))
    make_vars = dict(re.findall(r"^(\w+)\s*:=\s*(\S+)", (REPO / "Makefile").read_text(), re.M))
    return {re.sub(r"\$\((\w+)\)", lambda m: make_vars.get(m.group(1), m.group(0)), p).rstrip("/") for p in paths}


def _named_path_ok(path: str, produced: set[str]) -> bool:
    path = re.sub(r"\.(split\.)?rejects\.jsonl$|\.run\.json$", ".jsonl", path)  # written beside its output
    fixed = re.split(r"[<*{–]|\.\.\.", path)[0]  # a placeholder, glob or range: its fixed part
    if fixed != path:  # something existing or written starts with it
        return any((p + "/").startswith(fixed) for p in produced) or \
            any((REPO / fixed).parent.glob(Path(fixed).name + "*"))
    path = path.rstrip("/")
    if (REPO / path).exists():
        return True
    return any(p == path or p.startswith(path + "/") or path.startswith(p + "/") for p in produced)


TOKEN_PATH_RE = re.compile(PATH_RE.pattern.strip("`").replace("[^`\\s]*", "[^`\\s'\"：:，、）(（)]*"))
COMMAND_LINE = re.compile(r"\s*(?:[A-Z_]+=\S+\s+)*(?:python|torchrun|accelerate|bash|\.venv|modelscope|pip|make|echo|vllm)\b")


def named_paths(text: str) -> set[str]:
    """Paths in backticks in the prose, and path-like tokens of the commands in code blocks."""
    names = set(PATH_RE.findall(text))
    for block in re.findall(r"```[^\n]*\n(.*?)```", text, re.S):
        for line in block.splitlines():
            if not COMMAND_LINE.match(line):
                continue  # example output, tree listings: not commands
            names |= {m.group(1) for m in TOKEN_PATH_RE.finditer(line.split("#")[0])
                      if m.start() == 0 or line[m.start() - 1] in " =\"'"}
    return names


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_paths_named_in_the_docs_exist_or_are_written_by_a_documented_command(doc, produced):
    missing = sorted({p for p in named_paths(doc.read_text(encoding="utf-8")) if not _named_path_ok(p, produced)})
    assert not missing, f"{doc.relative_to(REPO)} names paths that neither exist nor are written by a command: {missing}"


def test_the_paths_check_refuses_an_unwritten_path(produced):
    assert _named_path_ok("model/deepseek_r1_1.5b_lora/best_model", produced)  # written by the training default
    assert _named_path_ok("configs/fsdp2_qlora.json", produced)
    assert not _named_path_ok("model/merged_elsewhere", produced)
    assert not _named_path_ok("configs/no_such.json", produced)


def test_readme_hardware_table_is_the_memory_estimate():
    from r1_sft.training.memory_estimate import readme_table

    assert readme_table() in (REPO / "README.md").read_text(encoding="utf-8")


# Pages that give GPU memory or speed figures: each says once that they were not measured on a GPU.
ESTIMATE_PAGES = ("README.md", "docs/gpus.md", "docs/multi_gpu.md", "docs/faq.md", "docs/training.md",
                  "docs/distillation.md")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_pages_say_once_what_was_not_measured_on_a_gpu(doc):
    count = doc.read_text(encoding="utf-8").count("未在 GPU 上实测")
    rel = str(doc.relative_to(REPO))
    assert count == 1 if rel in ESTIMATE_PAGES else count <= 1, f"{rel}: '未在 GPU 上实测' {count} times"


def test_readme_first_screen_names_the_driver_how_to_check_it_and_the_way_out():
    from r1_sft.model.hardware import CUDA12_INSTALL, MIN_DRIVER_FOR_CUDA

    first_screen = "\n".join((REPO / "README.md").read_text(encoding="utf-8").splitlines()[:35])
    assert f"R{MIN_DRIVER_FOR_CUDA[13]}" in first_screen and "nvidia-smi" in first_screen
    assert CUDA12_INSTALL in first_screen  # the same command the start-up check prints
