"""File modes (``dicom_node.storage.modes``): the umask and the roots' modes, private by
default or shared with one group, and a clear error for a group that is not there. A whole
pipeline run's files are checked in tests/integration/test_file_modes.py."""

from __future__ import annotations

import grp
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_node.settings import Settings
from dicom_node.storage.modes import FileModeError, secure


@pytest.fixture(autouse=True)
def keep_umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def settings(tmp_path: Path, group: str | None = None) -> Settings:
    return Settings(
        storage={"root": str(tmp_path / "storage"), "group": group},  # type: ignore[arg-type]
        database={"url": f"sqlite:///{tmp_path / 'index.db'}"},  # type: ignore[arg-type]
        models={"results_root": str(tmp_path / "results")},  # type: ignore[arg-type]
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_by_default_whatever_the_umask(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    db.write_bytes(b"")
    db.chmod(0o644)
    secure(settings(tmp_path), create=True)
    assert mode(tmp_path / "storage") == 0o700
    assert mode(tmp_path / "results") == 0o700
    assert mode(db) == 0o600
    new = tmp_path / "storage/new.dcm"
    new.write_bytes(b"x")
    assert mode(new) == 0o600  # the umask is the node's now
    assert os.umask(0o077) == 0o077


def test_a_read_command_does_not_create_the_roots(tmp_path: Path) -> None:
    secure(settings(tmp_path))
    assert not (tmp_path / "storage").exists() and not (tmp_path / "results").exists()


def test_a_group_gets_setgid_folders_and_group_files(tmp_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    secure(settings(tmp_path, group), create=True)
    root = tmp_path / "storage"
    assert mode(root) == 0o2770
    assert root.stat().st_gid == os.getgid()
    made = root / "a.dcm"
    made.write_bytes(b"x")
    assert mode(made) == 0o660


def test_a_group_that_is_not_here_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileModeError, match="'no-such-group-xyz' is not a group on this machine"):
        secure(settings(tmp_path, "no-such-group-xyz"), create=True)
