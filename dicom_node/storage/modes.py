"""File modes. Everything the node writes may hold PHI (instances, results and their summaries,
the index database, the admin session secret), so it is private to the node's user (files 0600,
folders 0700) whatever the umask it was started with, or shared with one group named by
``[storage] group`` (files 0660, folders 2770: setgid, so new files take the group).

The process umask is set once, at start, and the spawned SCP processes, embedded workers and
Celery pool children inherit it; the storage and results roots are made private (or given to
the group) so nothing below them is reachable by others even if it was written earlier.
"""

from __future__ import annotations

import grp
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from dicom_node.settings import Settings

PRIVATE_UMASK, GROUP_UMASK = 0o077, 0o007
PRIVATE_FOLDER, GROUP_FOLDER = 0o700, 0o2770
PRIVATE_FILE, GROUP_FILE = 0o600, 0o660


class FileModeError(ValueError):
    """``[storage] group`` names no group here."""


def _gid(group: str | None) -> int | None:
    if group is None:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise FileModeError(f"[storage] group {group!r} is not a group on this machine") from None


def secure(settings: Settings, *, create: bool = False) -> None:
    """Set the umask and the roots' modes (``create``: make the roots first, as ``serve``
    does; a read-only command leaves a missing root missing)."""
    gid = _gid(settings.storage.group)
    os.umask(PRIVATE_UMASK if gid is None else GROUP_UMASK)
    for root in dict.fromkeys([Path(settings.storage.root), Path(settings.results_root)]):
        if create:
            root.mkdir(parents=True, exist_ok=True)
        if root.is_dir():
            _own(root, gid, PRIVATE_FOLDER if gid is None else GROUP_FOLDER)
    url = make_url(settings.database.url.get_secret_value())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        db = Path(url.database)
        for path in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
            if path.exists():
                _own(path, gid, PRIVATE_FILE if gid is None else GROUP_FILE)


def _own(path: Path, gid: int | None, mode: int) -> None:
    if gid is not None and path.stat().st_gid != gid:
        os.chown(path, -1, gid)
    path.chmod(mode)
