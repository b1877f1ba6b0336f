"""The pins that make the test data reproducible: every file has an origin and matches."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO
from tools.fetch_testdata import ORIGINS, pins, verify


def test_every_pinned_file_has_an_origin() -> None:
    rows = pins()
    assert len(rows) > 250
    assert {r["source"] for r in rows} <= ORIGINS.keys()


def test_local_copy_matches_the_pins(testdata: Path) -> None:
    assert verify(testdata) == []


def test_verify_command(testdata: Path) -> None:
    done = subprocess.run(
        [sys.executable, "tools/fetch_testdata.py", "--verify", str(testdata)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout
    assert "match their sha256 pin" in done.stdout
