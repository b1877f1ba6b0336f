"""Atomic, durable file writes: temp file in ``incoming/``, fsync, then link or rename.

``keep_first`` publishes with ``os.link`` (fails if the name exists: atomic keep-first even when
two associations race on one SOP Instance UID); ``overwrite`` publishes with ``os.replace``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dicom_node.storage.errors import (
    DiskReserveError,
    WriteFailedError,
)

ASSOCIATION_HEADROOM_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WriteResult:
    path: Path
    size_bytes: int
    existed: bool  # a file of that name was already there (a duplicate)


class AtomicWriter:
    def __init__(self, incoming: Path, *, fsync: bool, min_free_bytes: int) -> None:
        self.incoming = incoming
        self.fsync = fsync
        self.min_free_bytes = min_free_bytes

    def has_reserve(self) -> bool:
        """May a new association start? Wants room for at least one large instance above the
        reserve, so a sender is refused up front rather than after its first few stores."""
        free = shutil.disk_usage(self.incoming).free
        return free >= self.min_free_bytes + ASSOCIATION_HEADROOM_BYTES

    def write(self, final: Path, chunks: list[bytes], *, overwrite: bool) -> WriteResult:
        """Write ``chunks`` to ``final`` so that the name never refers to a partial file."""
        size = sum(len(c) for c in chunks)
        if shutil.disk_usage(self.incoming).free - size < self.min_free_bytes:
            raise DiskReserveError("disk reserve reached")
        if not overwrite and final.exists():
            return WriteResult(final, size, existed=True)
        fd, tmp_name = tempfile.mkstemp(dir=self.incoming, suffix=".part")
        tmp = Path(tmp_name)
        try:
            try:
                with os.fdopen(fd, "wb", buffering=0) as fh:
                    for chunk in chunks:
                        fh.write(chunk)
                    if self.fsync:
                        os.fdatasync(fh.fileno())
                return self._publish(tmp, final, size, overwrite=overwrite)
            except OSError as exc:
                raise WriteFailedError(f"write failed: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    def _publish(self, tmp: Path, final: Path, size: int, *, overwrite: bool) -> WriteResult:
        try:
            existed = self._link_or_replace(tmp, final, overwrite=overwrite)
        except FileNotFoundError:  # first instance of a series (or its folder was removed)
            final.parent.mkdir(parents=True, exist_ok=True)
            self._fsync_dir(final.parent.parent)  # the new series folder's own entry
            self._fsync_dir(final.parent.parent.parent)  # and a new study folder's
            existed = self._link_or_replace(tmp, final, overwrite=overwrite)
        if not existed or overwrite:
            self._fsync_dir(final.parent)
        return WriteResult(final, size, existed=existed)

    @staticmethod
    def _link_or_replace(tmp: Path, final: Path, *, overwrite: bool) -> bool:
        """Publish ``tmp`` as ``final``; ``True`` if ``final`` already existed."""
        if overwrite:
            existed = final.exists()
            tmp.replace(final)
            return existed
        try:
            os.link(tmp, final)
        except FileExistsError:
            return True
        return False

    def _fsync_dir(self, folder: Path) -> None:
        if not self.fsync:
            return
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
