"""The README and the pages of docs/ are honest: every ```python block runs as written from the
repository root and prints what the ```text block right after it shows (words exactly, numbers to a
relative 1e-3, absolute 1e-6); the README's quick start runs in order in a scratch folder; every
relative link points at a file (and heading) that exists; the README stays a landing page."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest
from utils import FIXTURES, same_output

ROOT = FIXTURES.parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "vqgan_flax" / "default_model" / "README.md"]
EXAMPLE = re.compile(r"```python\n(.*?)```\n\n```text\n(.*?)```\n", flags=re.S)
QUICK_START = re.search(r"^## Quick start\n(.*?)^## ", (ROOT / "README.md").read_text(), flags=re.S | re.M).group(1)


def _examples() -> list:
    """(code, shown) of every python block outside the README's quick start, named by page."""
    found = []
    for page in PAGES:
        text = page.read_text()
        if page.name == "README.md" and page.parent == ROOT:
            text = text.replace(QUICK_START, "")
        for index, (code, shown) in enumerate(EXAMPLE.findall(text)):
            found.append(pytest.param(code, shown, id=f"{page.relative_to(ROOT)}:{index}"))
    return found


def _run_python(code: str, cwd: pathlib.Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_every_python_block_has_its_output_shown():
    for page in PAGES:
        text = page.read_text()
        assert len(re.findall(r"```python\n", text)) == len(EXAMPLE.findall(text)), page
    assert len(_examples()) >= 6


def test_output_comparison_tells_numbers_and_words_apart():
    assert same_output("PSNR 26.4612 dB\n(1, 256)", "PSNR 26.46 dB\n(1, 256)")
    assert not same_output("PSNR 26.50 dB", "PSNR 26.46 dB")
    assert not same_output("(1, 257)", "(1, 256)") and not same_output("(1, 256) True", "(1, 256) False")
    assert not same_output("gumbel 2", "gumbel 2 64") and same_output("722,771", "722,771")


@pytest.mark.parametrize(("code", "shown"), _examples())
def test_block_prints_what_it_shows(code, shown):
    result = _run_python(code, ROOT)
    assert result.returncode == 0, f"block failed:\n{code}\n{result.stderr[-3000:]}"
    assert same_output(result.stdout, shown), f"block printed\n{result.stdout}\nbut shows\n{shown}"


def test_quick_start_runs_in_order(tmp_path):
    """The quick start's shell commands, then its Python blocks, in a scratch folder that sees the
    repository's examples/ and tests/ (so two stacks running at once never share its outputs)."""
    for name in ("examples", "tests"):
        (tmp_path / name).symlink_to(ROOT / name)
    commands = re.findall(r"```bash\n(.*?)```", QUICK_START, flags=re.S)
    assert commands, "the quick start has no shell commands"
    bin_dir = pathlib.Path(sys.executable).parent
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    for line in "".join(commands).splitlines():
        result = subprocess.run(line, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    assert sorted(p.name for p in (tmp_path / "build" / "decoded").iterdir()) == [
        "brick.png",
        "chelsea.png",
        "coffee.png",
        "rocket.png",
    ]
    examples = EXAMPLE.findall(QUICK_START)
    assert len(examples) == len(re.findall(r"```python\n", QUICK_START)) >= 2
    for code, shown in examples:
        result = _run_python(code, tmp_path)
        assert result.returncode == 0, f"quick start block failed:\n{code}\n{result.stderr[-3000:]}"
        assert same_output(result.stdout, shown), f"quick start printed\n{result.stdout}\nbut shows\n{shown}"


def _links(page: pathlib.Path):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target):
            yield target


def _anchors(page: pathlib.Path) -> set:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_what_exists(page):
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)} links to {target}: no such file"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.relative_to(ROOT)} links to {target}: no such heading"


def test_link_check_finds_a_broken_link(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\nSee [a](missing.md), [b](#title), [c](#nowhere) and [d](https://x.org).\n")
    assert list(_links(page)) == ["missing.md", "#title", "#nowhere"]
    assert _anchors(page) == {"title"}


def test_readme_is_a_landing_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    for heading in ("## Install", "## Quick start", "## Which class for which job", "## Documentation"):
        assert heading in readme
    assert re.search(r"!\[[^\]]+\]\(docs/images/[\w.-]+\)", readme), "the README shows no picture"
    linked = {pathlib.Path(t.partition("#")[0]).name for t in _links(ROOT / "README.md")}
    assert {p.name for p in (ROOT / "docs").glob("*.md")} <= linked, "a docs page the README does not link"


def test_performance_page_is_generated_from_the_results():
    """docs/performance.md holds exactly what benchmarks/report.py makes of the results."""
    import report

    section = report.section()
    assert section in (ROOT / "docs" / "performance.md").read_text()
    for needle in (
        "**CPU**",
        "**GPU**",
        "**Memory**",
        "**Dataset tokenization**",
        "**Targets**",
        "torch-compile-float32",
    ):
        assert needle in section
    # One verdict per target, each computed from the numbers; no literal verdict in the generator.
    assert section.count("**met**") + section.count("**not met**") >= 6
    source = (ROOT / "benchmarks" / "report.py").read_text()
    assert "— **met**" not in source and "— **not met**" not in source
