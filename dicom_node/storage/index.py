"""Index rows for stored instances, written in one short transaction per instance.

The C-STORE handler is on the sender's critical path (PITFALLS 3), so this uses SQLAlchemy Core
and remembers, per association, which study/series rows it has already ensured.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Connection, Engine, insert, select, update

from dicom_node.audit.recorder import AuditEventType, record
from dicom_node.db.models import (
    Association,
    Instance,
    Patient,
    Series,
    Study,
    StudyAssociation,
    utcnow,
)
from dicom_node.db.session import insert_ignore
from dicom_node.domain import AssociationEnd, StudyState, phi_hash
from dicom_node.storage.paths import InstanceKey
from dicom_node.studies.transitions import transition_study


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    """What the index keeps of one received instance (no PHI beyond the accession number)."""

    key: InstanceKey
    sop_class_uid: str
    transfer_syntax_uid: str
    relative_path: str
    size_bytes: int
    received_at: datetime
    association_id: str | None
    patient_key: str | None = None
    accession_number: str | None = None
    study_date: str | None = None
    modality: str | None = None
    series_number: int | None = None
    instance_number: int | None = None
    series_description: str | None = None
    body_part: str | None = None
    image_type: str | None = None
    slice_thickness_mm: float | None = None
    orientation: str | None = None


@dataclass(frozen=True, slots=True)
class InstanceConflict:
    """The SOP Instance UID is already indexed under another study or series."""

    sop_instance_uid: str
    stored_study_uid: str
    stored_series_uid: str

    @property
    def comment(self) -> str:  # a C-STORE Error Comment: LO, 64 characters
        """The C-STORE Error Comment for the conflict (LO, 64 characters)."""
        return "SOP Instance UID already stored in another study/series"


class _ConflictError(Exception):
    def __init__(self, conflict: InstanceConflict) -> None:
        self.conflict = conflict


@dataclass(slots=True)
class AssociationCache:
    """Row ids already ensured by this association (ids never change once written)."""

    studies: dict[str, int] = field(default_factory=dict)
    series: dict[str, int] = field(default_factory=dict)


class Index:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        # SQLite has one writer at a time, and its busy handler backs off in steps of up to
        # 100 ms: queue this process's writers on a lock instead of on the database file.
        self._write_lock: AbstractContextManager[object] = (
            threading.Lock() if engine.dialect.name == "sqlite" else nullcontext()
        )

    @contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._write_lock, self.engine.begin() as conn:
            yield conn

    # -- associations ----------------------------------------------------------------------
    def association_started(self, assoc_id: str, **values: Any) -> None:
        """Record an accepted association and its peer."""
        with self._begin() as conn:
            conn.execute(insert(Association), {"id": assoc_id, "started_at": utcnow(), **values})

    def association_ended(self, assoc_id: str, reason: AssociationEnd) -> None:
        """Record how an open association ended (once)."""
        with self._begin() as conn:
            conn.execute(
                update(Association)
                .where(Association.id == assoc_id, Association.ended_at.is_(None))
                .values(ended_at=utcnow(), end_reason=str(reason))
            )

    def close_orphaned_associations(self, pid: int | None = None) -> int:
        """Associations still open that belonged to a dead process (all of them at start-up)."""
        where: list[ColumnElement[bool]] = [Association.ended_at.is_(None)]
        if pid is not None:
            where.append(Association.pid == pid)
        with self._begin() as conn:
            result = conn.execute(
                update(Association)
                .where(*where)
                .values(ended_at=utcnow(), end_reason=str(AssociationEnd.NODE_RESTART))
            )
            if result.rowcount:
                record(
                    conn,
                    AuditEventType.ASSOCIATIONS_CLOSED_AT_START,
                    details={"count": result.rowcount, "pid": pid},
                )
            return int(result.rowcount)

    # -- instances -------------------------------------------------------------------------
    def record_instance(
        self,
        rec: InstanceRecord,
        cache: AssociationCache,
        *,
        duplicate: bool,
        overwritten: bool,
    ) -> InstanceConflict | None:
        """Index one instance; audit duplicates and reopened studies in the same transaction.

        A SOP Instance UID already indexed under another study or series is not indexed (nothing
        of the new study or series is made, nothing reopened): the conflict is audited, with both
        places, and returned for the caller to refuse the instance and remove its file."""
        try:
            self._record(rec, cache, duplicate=duplicate, overwritten=overwritten)
        except _ConflictError as exc:
            cache.studies.pop(rec.key.study_uid, None)  # rolled back with the transaction
            cache.series.pop(rec.key.series_uid, None)
            c = exc.conflict
            with self._begin() as conn:
                record(
                    conn,
                    AuditEventType.INSTANCE_CONFLICT,
                    study_uid=c.stored_study_uid,
                    entity_type="instance",
                    entity_id=c.sop_instance_uid,
                    details={
                        "stored_study_uid": c.stored_study_uid,
                        "stored_series_uid": c.stored_series_uid,
                        "received_study_uid": rec.key.study_uid,
                        "received_series_uid": rec.key.series_uid,
                        "association_id": rec.association_id,
                        "path": rec.relative_path,
                    },
                )
            return c
        return None

    def _record(
        self, rec: InstanceRecord, cache: AssociationCache, *, duplicate: bool, overwritten: bool
    ) -> None:
        with self._begin() as conn:
            study_id = self._ensure_study(conn, rec, cache, touch=not duplicate or overwritten)
            series_id = self._ensure_series(conn, rec, study_id, cache)
            values = {
                "sop_instance_uid": rec.key.sop_instance_uid,
                "series_id": series_id,
                "sop_class_uid": rec.sop_class_uid,
                "transfer_syntax_uid": rec.transfer_syntax_uid,
                "instance_number": rec.instance_number,
                "path": rec.relative_path,
                "size_bytes": rec.size_bytes,
                "received_at": rec.received_at,
                "association_id": rec.association_id,
                "duplicates_received": 0,
            }
            inserted = insert_ignore(conn, Instance, values)
            if inserted:
                return
            stored = conn.execute(
                select(Study.study_uid, Series.series_uid)
                .select_from(Instance)
                .join(Series, Series.id == Instance.series_id)
                .join(Study, Study.id == Series.study_id)
                .where(Instance.sop_instance_uid == rec.key.sop_instance_uid)
            ).one()
            if (stored.study_uid, stored.series_uid) != (rec.key.study_uid, rec.key.series_uid):
                raise _ConflictError(
                    InstanceConflict(rec.key.sop_instance_uid, stored.study_uid, stored.series_uid)
                )
            if not duplicate:
                return
            where = Instance.sop_instance_uid == rec.key.sop_instance_uid
            changes: dict[str, Any] = {"duplicates_received": Instance.duplicates_received + 1}
            if overwritten:
                changes.update({k: values[k] for k in ("transfer_syntax_uid", "size_bytes")})
                changes.update(received_at=rec.received_at, association_id=rec.association_id)
            conn.execute(update(Instance).where(where).values(**changes))
            record(
                conn,
                AuditEventType.INSTANCE_OVERWRITTEN
                if overwritten
                else AuditEventType.INSTANCE_DUPLICATE,
                study_uid=rec.key.study_uid,
                entity_type="instance",
                entity_id=rec.key.sop_instance_uid,
                details={"association_id": rec.association_id, "series_uid": rec.key.series_uid},
            )

    def _ensure_study(
        self, conn: Connection, rec: InstanceRecord, cache: AssociationCache, *, touch: bool
    ) -> int:
        uid = rec.key.study_uid
        study_id = cache.studies.get(uid)
        if study_id is None:
            study_id = self._create_or_get_study(conn, rec)
            cache.studies[uid] = study_id
            if rec.association_id is not None:
                insert_ignore(
                    conn,
                    StudyAssociation,
                    {"study_id": study_id, "association_id": rec.association_id},
                )
        if touch:
            state = conn.execute(
                update(Study)
                .where(Study.id == study_id)
                .values(last_received=rec.received_at)
                .returning(Study.state)
            ).scalar_one()
            if state == StudyState.COMPLETE:
                transition_study(
                    conn,
                    study_id=study_id,
                    study_uid=uid,
                    current=StudyState.COMPLETE,
                    target=StudyState.REOPENED,
                    at=rec.received_at,
                    reason="instance received after completion",
                    details={"sop_instance_uid": rec.key.sop_instance_uid},
                )
        return study_id

    def _create_or_get_study(self, conn: Connection, rec: InstanceRecord) -> int:
        patient_id = None
        if rec.patient_key is not None:
            insert_ignore(
                conn,
                Patient,
                {"patient_key": rec.patient_key, "created_at": rec.received_at},
            )
            patient_id = conn.execute(
                select(Patient.id).where(Patient.patient_key == rec.patient_key)
            ).scalar_one()
        created = insert_ignore(
            conn,
            Study,
            {
                "study_uid": rec.key.study_uid,
                "patient_id": patient_id,
                "accession_number": rec.accession_number,
                "accession_hash": phi_hash(rec.accession_number),
                "study_date": rec.study_date,
                "state": str(StudyState.RECEIVING),
                "first_received": rec.received_at,
                "last_received": rec.received_at,
                "opened_at": rec.received_at,
                "times_completed": 0,
            },
        )
        study_id = conn.execute(
            select(Study.id).where(Study.study_uid == rec.key.study_uid)
        ).scalar_one()
        if created:
            record(
                conn,
                AuditEventType.STUDY_RECEIVING,
                study_uid=rec.key.study_uid,
                entity_type="study",
                entity_id=rec.key.study_uid,
                at=rec.received_at,
                details={"association_id": rec.association_id, "to": str(StudyState.RECEIVING)},
            )
        return int(study_id)

    def _ensure_series(
        self, conn: Connection, rec: InstanceRecord, study_id: int, cache: AssociationCache
    ) -> int:
        uid = rec.key.series_uid
        series_id = cache.series.get(uid)
        if series_id is None:
            insert_ignore(
                conn,
                Series,
                {
                    "series_uid": uid,
                    "study_id": study_id,
                    "modality": rec.modality,
                    "series_number": rec.series_number,
                    "first_received": rec.received_at,
                    "sop_class_uid": rec.sop_class_uid,
                    "series_description": rec.series_description,
                    "body_part": rec.body_part,
                    "image_type": rec.image_type,
                    "slice_thickness_mm": rec.slice_thickness_mm,
                    "orientation": rec.orientation,
                },
            )
            series_id = int(
                conn.execute(select(Series.id).where(Series.series_uid == uid)).scalar_one()
            )
            cache.series[uid] = series_id
        return series_id
