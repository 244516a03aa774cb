"""scripts/mutation_check.py: its mutations still apply to this tree, and a run shows a test that
passes unbroken and fails broken."""

from __future__ import annotations

import pytest
from utils import load_script


def test_every_mutation_applies_to_this_tree():
    """A refactor that moves a mutated line or renames a test must update the list, not silently
    leave the script checking nothing."""
    script = load_script("mutation_check")
    assert len(script.MUTATIONS) >= 8
    for mutation in script.MUTATIONS:
        script.check_applies(mutation)
        assert mutation.old != mutation.new, mutation.name


def test_a_stale_mutation_is_named(tmp_path):
    script = load_script("mutation_check")
    (tmp_path / "lib.py").write_text("x = 1\nx = 1\n")
    (tmp_path / "test_lib.py").write_text("def test_other():\n    pass\n")
    twice = script.Mutation("doubled", "lib.py", "x = 1", "x = 2", "test_lib.py::test_other")
    with pytest.raises(ValueError, match="doubled: lib.py holds its text 2 times, not once"):
        script.check_applies(twice, str(tmp_path))
    missing = script.Mutation("gone", "lib.py", "x = 1\nx", "y", "test_lib.py::test_lib")
    with pytest.raises(ValueError, match="gone: test_lib.py has no test_lib"):
        script.check_applies(missing, str(tmp_path))
    with pytest.raises(SystemExit, match="--only 'nothing like this': no mutation's name contains it"):
        script.main(["--only", "nothing like this"])


@pytest.mark.one_stack
def test_a_run_shows_the_crop_test_failing_broken_and_passing_unbroken(capsys):
    """One real run (the cheapest test): a worktree of HEAD, the test unbroken, broken, restored."""
    script = load_script("mutation_check")
    assert script.main(["--only", "center-crop"]) == 0
    row = capsys.readouterr().out.strip().splitlines()[-1]
    assert row.startswith("| center-crop offset rounded up | `tests/test_image_processing.py` | passed (")
    assert "| FAILED (" in row
