"""Paths under the storage root, built only from validated UIDs.

Layout::

    <root>/instances/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    <root>/incoming/      temp files being written (same filesystem, so rename is atomic)
    <root>/quarantine/    files the recovery scan could not index
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from dicom_node.domain import is_valid_uid
from dicom_node.storage.errors import (
    InvalidUIDError,
)

INSTANCES = "instances"
INCOMING = "incoming"
QUARANTINE = "quarantine"
SUFFIX = ".dcm"


@dataclass(frozen=True, slots=True)
class InstanceKey:
    """The three UIDs that place an instance; each checked by ``is_valid_uid``."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str

    def __post_init__(self) -> None:
        for name in ("study_uid", "series_uid", "sop_instance_uid"):
            if not is_valid_uid(getattr(self, name)):
                raise InvalidUIDError(f"invalid {name}")

    def relative_path(self) -> str:
        """``instances/<Study>/<Series>/<SOP Instance>.dcm`` under the storage root."""
        return f"{INSTANCES}/{self.study_uid}/{self.series_uid}/{self.sop_instance_uid}{SUFFIX}"


class StorageLayout:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.instances = self.root / INSTANCES
        self.incoming = self.root / INCOMING
        self.quarantine = self.root / QUARANTINE

    def create(self) -> None:
        """Make the instances, incoming and quarantine folders."""
        for folder in (self.instances, self.incoming, self.quarantine):
            folder.mkdir(parents=True, exist_ok=True)

    def path_for(self, key: InstanceKey) -> Path:
        """The stored file of ``key``, never outside the instances folder."""
        path = self.root / key.relative_path()
        # Defence in depth: validated UIDs cannot escape, but never trust one check alone.
        if not Path(os.path.normpath(path)).is_relative_to(self.instances):
            raise InvalidUIDError("UID escapes storage root")
        return path
