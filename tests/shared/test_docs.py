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
