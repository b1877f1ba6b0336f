"""The shipped systemd unit (deploy/dicom-node.service) is one systemd accepts, runs the node as
its own user with the data dir systemd makes for it, and keeps the hardening."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO

UNIT = REPO / "deploy" / "dicom-node.service"


def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "dicom-node.service"
    # the binary is where a site installs it, not here: check everything else
    unit.write_text(UNIT.read_text().replace("/opt/dicom-node/bin/dicom-node serve", "/bin/true"))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "dicom-node.service" not in done.stderr, done.stderr


def test_the_unit_runs_as_its_own_user_in_its_state_directory_hardened() -> None:
    lines = {
        line.split("=", 1)[0]: line.split("=", 1)[1]
        for line in UNIT.read_text().splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert lines["User"] == lines["Group"] == "dicom-node"
    assert lines["StateDirectory"] == "dicom-node"  # $STATE_DIRECTORY: the node's data dir
    assert "WorkingDirectory" not in lines  # nothing depends on it
    for key, value in {
        "NoNewPrivileges": "true",
        "ProtectSystem": "strict",
        "ProtectHome": "true",
        "PrivateTmp": "true",
        "CapabilityBoundingSet": "",
        "UMask": "0077",
        "RestartPreventExitStatus": "2",
    }.items():
        assert lines[key] == value, key
