"""The package's parts keep to what their ``__init__`` docstrings say: each part imports only the
parts its "May import:" line names (function-level imports included), the parts form no cycle,
no module passes 500 lines, and nothing edits ``sys.path`` (package, benchmarks, scripts, examples or
tests); the benchmark harnesses import each other without a cycle."""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "vqgan_flax"
PARTS = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
ROOT = "the package root"


def allowed_imports(part: str) -> set:
    """The parts named on the "May import:" line of ``part``'s docstring."""
    doc = ast.get_docstring(ast.parse((PACKAGE / part / "__init__.py").read_text())) or ""
    match = re.search(r"^May import: (.+?)\.$", doc, re.M | re.S)
    assert match, f"vqgan_flax/{part}/__init__.py: its docstring has no 'May import: ...' line"
    line = " ".join(match.group(1).split())
    if line == "nothing else of vqgan_flax":
        return set()
    names = set()
    for item in line.split(","):
        item = item.strip().removeprefix("and ")
        if item == "every part":
            names.update(PARTS)
        elif item.startswith("the package root"):
            names.add(ROOT)
        else:
            assert item in PARTS, f"vqgan_flax/{part}/__init__.py: 'May import' names {item!r}, not a part"
            names.add(item)
    return names - {part}


def imported_parts(path: pathlib.Path, text: str | None = None) -> dict:
    """Part (or ROOT) → first line importing it, for every import in ``path`` (or in ``text``, as
    if it were that file), at any depth."""
    relative = path.relative_to(PACKAGE).with_suffix("").parts
    package = list(relative[:-1])
    found: dict = {}
    for node in ast.walk(ast.parse(path.read_text() if text is None else text)):
        targets = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                dotted = [*base, *(node.module.split(".") if node.module else [])]
            elif (node.module or "").split(".")[0] == "vqgan_flax":
                dotted = node.module.split(".")[1:]
            else:
                continue
            if dotted:
                targets.append(dotted[0])
            else:  # `from vqgan_flax import x` / `from .. import x`: a part, or a name of the root
                targets += [a.name if a.name in PARTS else ROOT for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "vqgan_flax":
                    targets.append(parts[1] if len(parts) > 1 else ROOT)
        for target in targets:
            if target not in PARTS:
                target = ROOT  # a module of the root (the package's own __init__, _auto, vqgan)
            found.setdefault(target, node.lineno)
    return found


@pytest.mark.parametrize("part", PARTS)
def test_a_part_imports_only_what_its_docstring_allows(part):
    allowed = allowed_imports(part)
    wrong = []
    for path in sorted((PACKAGE / part).rglob("*.py")):
        for target, line in imported_parts(path).items():
            if target != part and target not in allowed:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target}")
    assert not wrong, f"{part} may import {sorted(allowed) or 'nothing'}; " + "; ".join(wrong)


def test_the_parts_form_no_cycle():
    graph = {part: allowed_imports(part) - {ROOT} for part in PARTS}
    done, active = set(), []

    def visit(part: str) -> None:
        if part in active:
            raise AssertionError("cycle between parts: " + " -> ".join([*active[active.index(part) :], part]))
        if part in done:
            return
        active.append(part)
        for other in sorted(graph[part]):
            visit(other)
        active.pop()
        done.add(part)

    for part in PARTS:
        visit(part)


def test_the_checker_sees_function_level_and_root_imports():
    """The rule would be empty if imports inside functions went unseen: they are found too."""
    module = PACKAGE / "utils" / "files.py"
    assert imported_parts(module) == {}
    late = module.read_text() + "\n\ndef _late():\n    from ..hub import resolve\n    from .. import DEFAULT_MODEL\n"
    assert set(imported_parts(module, late)) == {"hub", ROOT}
    assert set(imported_parts(module, "import vqgan_flax.data.sources\nfrom vqgan_flax import models\n")) == {
        "data",
        "models",
    }


def test_modules_stay_small_and_leave_sys_path_alone():
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text()
        lines = text.count("\n")
        assert lines <= 500, f"{path.relative_to(PACKAGE.parent)}: {lines} lines (at most 500)"
        assert "sys.path" not in text, f"{path.relative_to(PACKAGE.parent)} edits sys.path"


def _python_files_outside_the_package() -> list:
    root = PACKAGE.parent
    return sorted(
        p for folder in ("benchmarks", "scripts", "examples", "tests", "ci") for p in (root / folder).rglob("*.py")
    )


def test_benchmarks_scripts_and_tests_leave_sys_path_alone():
    """They find each other through pytest's ``pythonpath`` and the folder a script runs from."""
    itself = pathlib.Path(__file__).resolve()
    edits = re.compile(r"sys\.path\s*(\.(insert|append|extend)\b|\[|\+?=)")
    for path in _python_files_outside_the_package():
        if path.resolve() != itself:
            assert not edits.search(path.read_text()), f"{path.relative_to(PACKAGE.parent)} edits sys.path"


def test_benchmark_harnesses_import_each_other_without_a_cycle():
    folder = PACKAGE.parent / "benchmarks"
    names = {p.stem for p in folder.glob("*.py")}
    graph = {}
    for path in folder.glob("*.py"):
        tree = ast.parse(path.read_text())
        found = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        found |= {
            n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level
        }
        graph[path.stem] = found & names - {path.stem}
    assert graph["report"] and graph["run"], graph  # the checker sees function-level imports: both import something

    def visit(name: str, path: tuple) -> None:
        assert name not in path, f"benchmarks import in a circle: {' -> '.join((*path, name))}"
        for other in sorted(graph[name]):
            visit(other, (*path, name))

    for name in sorted(graph):
        visit(name, ())
