"""The recovery scan: make the index agree with the storage root after a crash.

- ``incoming/`` holds only temp files of writes that never finished: nothing was acknowledged for
  them, so they are deleted.
- A file under ``instances/`` that the index lacks (a crash between rename and commit) is indexed
  if its own UIDs match its path, and moved to ``quarantine/`` otherwise (also when its SOP
  Instance UID is already indexed under another study or series). Both are audited, and a
  second scan finds nothing to do: it indexes, audits and reopens nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from sqlalchemy import Engine, select

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.models import Instance, utcnow
from dicom_node.logs import get_logger
from dicom_node.storage.errors import StorageRefusedError
from dicom_node.storage.index import AssociationCache, Index, InstanceRecord
from dicom_node.storage.paths import SUFFIX, InstanceKey, StorageLayout

log = get_logger(__name__)


@dataclass(slots=True)
class RecoveryReport:
    partial_removed: int = 0
    indexed: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)


def recover(
    layout: StorageLayout, engine: Engine, progress: Callable[[int], object] | None = None
) -> RecoveryReport:
    """Index every stored file the index lacks; quarantine what cannot be indexed.
    ``progress(1)`` is called per file seen (``dicom-node db reindex``'s progress bar)."""
    report = RecoveryReport()
    layout.create()
    for tmp in layout.incoming.iterdir():
        tmp.unlink(missing_ok=True)
        report.partial_removed += 1
    with engine.connect() as conn:
        known = set(conn.execute(select(Instance.path)).scalars())
    index = Index(engine)
    cache = AssociationCache()
    for dirpath, _dirs, files in os.walk(layout.instances):
        for name in files:
            path = Path(dirpath) / name
            rel = path.relative_to(layout.root).as_posix()
            if progress is not None:
                progress(1)
            if rel in known:
                continue
            reason = _index_orphan(index, cache, layout, path, rel)
            if reason is None:
                report.indexed.append(rel)
            else:
                _quarantine(engine, layout, path, rel, reason)
                report.quarantined.append(rel)
    if report.partial_removed or report.indexed or report.quarantined:
        log.warning(
            "recovery_scan",
            partial_removed=report.partial_removed,
            indexed=len(report.indexed),
            quarantined=len(report.quarantined),
        )
    return report


def _index_orphan(
    index: Index, cache: AssociationCache, layout: StorageLayout, path: Path, rel: str
) -> str | None:
    """Index one orphan file; return why it cannot be indexed, or ``None`` on success."""
    parts = Path(rel).parts  # instances/<study>/<series>/<sop>.dcm
    if len(parts) != 4 or not parts[3].endswith(SUFFIX):
        return "unexpected path"
    try:
        key = InstanceKey(parts[1], parts[2], parts[3][: -len(SUFFIX)])
        ds = dcmread(path, stop_before_pixels=True)
    except (StorageRefusedError, InvalidDicomError, OSError, ValueError, EOFError) as exc:
        return f"unreadable: {type(exc).__name__}"
    own = (ds.get("StudyInstanceUID"), ds.get("SeriesInstanceUID"), ds.get("SOPInstanceUID"))
    if tuple(str(v) for v in own) != (key.study_uid, key.series_uid, key.sop_instance_uid):
        return "UIDs do not match path"
    rec = InstanceRecord(
        key=key,
        sop_class_uid=str(ds.get("SOPClassUID", "")),
        transfer_syntax_uid=str(ds.file_meta.get("TransferSyntaxUID", "")),
        relative_path=rel,
        size_bytes=path.stat().st_size,
        received_at=utcnow(),
        association_id=None,
        modality=ds.get("Modality"),
    )
    conflict = index.record_instance(rec, cache, duplicate=False, overwritten=False)
    if conflict is not None:  # audited by the index; quarantined, so a re-run finds nothing
        return (
            f"SOP Instance UID conflict: already indexed in study {conflict.stored_study_uid}, "
            f"series {conflict.stored_series_uid}"
        )
    with index.engine.begin() as conn:
        record(
            conn,
            AuditEventType.RECOVERY_INDEXED,
            study_uid=key.study_uid,
            entity_type="instance",
            entity_id=key.sop_instance_uid,
            details={"path": rel},
        )
    return None


def _quarantine(engine: Engine, layout: StorageLayout, path: Path, rel: str, reason: str) -> None:
    target = layout.quarantine / rel.replace("/", "__")
    path.replace(target)
    with engine.begin() as conn:
        record(
            conn,
            AuditEventType.RECOVERY_QUARANTINED,
            entity_type="file",
            details={"path": rel, "quarantined_as": target.name, "reason": reason},
        )
