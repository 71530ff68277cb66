"""The package's shape: one folder per pipeline stage, imports only downward, no circle, no module
past ~400 lines, and nothing in the package importing a stage script.

Every import counts, including the ones inside functions: a lazy import still makes two modules
depend on each other (an old training <-> training checks circle was built from lazy imports).
"""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGE = REPO / "r1_sft"
MAX_LINES = 400  # a module past this mixes concerns and gets split along its seams
MAX_SHARED = 8  # modules every stage uses sit at the top; everything else lives in its stage's folder

# Which stage folders each stage folder may import ("shared" = the modules at the top of r1_sft/).
# shared < data, model < training < rl;  model < inference < rl, evaluation;  data < evaluation.
ALLOWED = {
    "shared": set(),
    "data": {"shared"},
    "model": {"shared"},
    "training": {"shared", "data", "model"},
    "rl": {"shared", "data", "model", "training", "inference"},
    "inference": {"shared", "model"},
    "evaluation": {"shared", "data", "model", "inference"},
}


def module_name(path: Path, package: Path = PACKAGE) -> str:
    rel = path.relative_to(package.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def folder_of(module: str) -> str:
    """'r1_sft.training.loss' -> 'training'; 'r1_sft.cli' -> 'shared'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ALLOWED) else "shared"


def resolve(module: str, node: ast.ImportFrom, is_package: bool) -> list[str]:
    """The r1_sft modules an ImportFrom names (absolute or relative; `from X import mod` counted as X.mod)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if not target.startswith("r1_sft"):
        return []
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


def package_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the r1_sft modules it imports (relative or absolute, top level or lazy)."""
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                deps.update(resolve(name, node, path.name == "__init__.py"))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("r1_sft"))
        graph[name] = {d for d in deps if d in files and not d.endswith("__init__")} - {name, "r1_sft"}
    return graph


def layering_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in sorted(graph.items()):
        here = folder_of(module)
        for dep in sorted(deps):
            there = folder_of(dep)
            if there != here and there not in ALLOWED[here] and dep != "r1_sft." + there:
                bad.append(f"{module} ({here}) imports {dep} ({there})")
    return bad


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_circle_in_the_package():
    graph = package_imports()
    assert "r1_sft.training.checks" in graph["r1_sft.training.run"]
    assert find_cycle(graph) is None, f"import circle: {' -> '.join(find_cycle(graph))}"


def test_stage_folders_import_only_downward():
    assert layering_violations(package_imports()) == []


def test_layering_check_catches_an_upward_import(tmp_path):
    """A lower folder importing a higher one (absolute, relative or lazy) is reported."""
    pkg = tmp_path / "r1_sft"
    for folder in ("data", "model", "training", "evaluation"):
        (pkg / folder).mkdir(parents=True)
        (pkg / folder / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "training" / "loss.py").write_text("from r1_sft.cli import x\n")
    (pkg / "model" / "estimate.py").write_text("def f():\n    from ..training.loss import CHUNK\n")
    (pkg / "data" / "records.py").write_text("from r1_sft.evaluation import metrics\n")
    (pkg / "evaluation" / "metrics.py").write_text("from r1_sft.model import estimate\n")
    bad = layering_violations(package_imports(pkg))
    assert bad == ["r1_sft.data.records (data) imports r1_sft.evaluation.metrics (evaluation)",
                   "r1_sft.model.estimate (model) imports r1_sft.training.loss (training)"]


def test_every_module_sits_in_a_stage_folder():
    shared = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(shared) <= MAX_SHARED, f"top-level modules (shared by every stage): {shared}"
    folders = sorted(p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert folders == sorted(set(ALLOWED) - {"shared"})
    for folder in folders:
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text(encoding="utf-8")))
        assert doc and "May import" in doc, f"r1_sft/{folder}/__init__.py must say what it holds and may import"
        for module in (PACKAGE / folder).glob("*.py"):
            if module.stem != "__init__":
                assert module.stem in doc, f"r1_sft/{folder}/__init__.py does not list {module.stem}"


def test_nothing_in_the_package_imports_a_stage_script():
    stage_dirs = ("scripts", "data", "download_model", "bench")
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            assert not any(n.split(".")[0] in stage_dirs and n.split(".")[0] != "r1_sft" for n in names), path


def test_no_module_past_about_400_lines():
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"split these along their seams: {too_long}"
