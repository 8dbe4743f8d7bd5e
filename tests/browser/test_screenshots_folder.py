"""`make test` leaves a clone's tree clean: the journeys' screenshots go to a folder git ignores, unless asked for the
README's (`make screenshots`). .ci/run checks the whole suite's effect on `git status`."""

import os
import shutil
import subprocess

import pytest

from .journeys import ROOT, SCREENSHOTS


@pytest.mark.skipif("IDLEFLEET_SCREENSHOTS" in os.environ, reason="screenshots asked for in a folder of one's own")
@pytest.mark.skipif(not shutil.which("git") or not (ROOT / ".git").exists(), reason="not a git checkout")
def test_the_tests_screenshots_are_written_where_git_ignores_them():
    assert SCREENSHOTS == ROOT / "var" / "screenshots"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(SCREENSHOTS / "market.png")], cwd=ROOT, check=False)
    assert ignored.returncode == 0
