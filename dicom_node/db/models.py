"""The index: only the attributes the node needs, never pixel data.

Timestamps are timezone-aware UTC. ``audit_events`` is append-only and written in the same
transaction as the state change it records.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, always returns aware datetimes (SQLite has no time zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the index; use dicom_node.db.models.utcnow")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


UID = String(64)
AE = String(16)


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patients"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # sha256 of (IssuerOfPatientID, PatientID): enough to group studies, no PHI in the index.
    patient_key: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    patient_id: Mapped[int | None] = mapped_column(ForeignKey("patients.id"))
    accession_number: Mapped[str | None] = mapped_column(String(64))
    accession_hash: Mapped[str | None] = mapped_column(String(16), index=True)
    study_date: Mapped[str | None] = mapped_column(String(8))
    state: Mapped[str] = mapped_column(String(16), index=True)
    first_received: Mapped[datetime] = mapped_column(UTCDateTime)
    last_received: Mapped[datetime] = mapped_column(UTCDateTime)
    # When the current receiving episode began (first instance, or the reopening instance).
    opened_at: Mapped[datetime] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completion_reason: Mapped[str | None] = mapped_column(String(32))
    times_completed: Mapped[int] = mapped_column(Integer, default=0)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    first_received: Mapped[datetime] = mapped_column(UTCDateTime)
    # Taken from the series' first instance: what routing rules match on.
    sop_class_uid: Mapped[str | None] = mapped_column(UID)
    series_description: Mapped[str | None] = mapped_column(String(64))
    body_part: Mapped[str | None] = mapped_column(String(16))
    image_type: Mapped[str | None] = mapped_column(String(128))  # values joined with "\\"
    slice_thickness_mm: Mapped[float | None] = mapped_column(Float)
    orientation: Mapped[str | None] = mapped_column(String(8))  # AXIAL/SAGITTAL/CORONAL/OBLIQUE


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(255))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    association_id: Mapped[str | None] = mapped_column(ForeignKey("associations.id"), index=True)
    duplicates_received: Mapped[int] = mapped_column(Integer, default=0)


class Association(Base):
    __tablename__ = "associations"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    calling_ae: Mapped[str] = mapped_column(AE)
    called_ae: Mapped[str] = mapped_column(AE)
    peer_host: Mapped[str] = mapped_column(String(64))
    peer_port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(default=False)
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    end_reason: Mapped[str | None] = mapped_column(String(16))


class StudyAssociation(Base):
    """Which associations delivered to which study: the evidence for the settle rule."""

    __tablename__ = "study_associations"

    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), primary_key=True)
    association_id: Mapped[str] = mapped_column(ForeignKey("associations.id"), primary_key=True)


class Job(Base):
    """One model run on the series a rule chose. The row is the truth; a queue only carries ids."""

    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_state_priority", "state", "priority"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    rule: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(64))
    series_uids: Mapped[list[str]] = mapped_column(JSON)
    # the stack of the series the rule chose: number, label, frames, spacing (None = whole series)
    stack: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # sha256 of (model, rule, sorted SOP Instance UIDs): the same input never makes two jobs.
    input_key: Mapped[str] = mapped_column(String(64), unique=True)
    priority: Mapped[int] = mapped_column(Integer)  # 0 = stat, 1 = routine
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    error: Mapped[str | None] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # last handed to a queue (Celery or embedded); the reconciler re-sends after unclaimed_after_s
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    results_ready_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # RESULTS_READY: where the mask lives and what it measured (workers.inference.pipeline)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class AuditEvent(Base):
    """Append-only. One row per state change, in the same transaction as the change."""

    __tablename__ = "audit_events"
    __table_args__ = (Index("ix_audit_events_study_uid_at", "study_uid", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    event_type: Mapped[str] = mapped_column(String(48), index=True)
    actor: Mapped[str] = mapped_column(String(64), default="system")
    study_uid: Mapped[str | None] = mapped_column(UID)
    entity_type: Mapped[str | None] = mapped_column(String(32))
    entity_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Export(Base):
    """One result object for one destination: the outbox row. Delivered, or visibly FAILED."""

    __tablename__ = "exports"
    __table_args__ = (
        UniqueConstraint("job_id", "destination", "sop_instance_uid"),
        Index("ix_exports_destination_state", "destination", "state"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    study_uid: Mapped[str] = mapped_column(UID)
    destination: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(8))  # seg / sr / sc
    sop_class_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))  # the object file, absolute
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(String(1024))
    warning: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class DestinationCircuit(Base):
    """Per destination: consecutive failed associations, and whether sending is paused."""

    __tablename__ = "destination_circuits"

    destination: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(8))
    failures: Mapped[int] = mapped_column(Integer, default=0)
    opened_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    probe_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(String(1024))


class User(Base):
    """An admin UI/API account. Only an argon2id hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # admin (may act) / viewer (read-only)
    disabled: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AdminSession(Base):
    """A logged-in admin UI/API session. The cookie carries a random token; only its sha256 is
    kept, so the table never holds a usable credential. Logout, a password or role change and
    disabling the user delete the rows: the cookie is then worth nothing."""

    __tablename__ = "admin_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256(token), hex
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    client: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)  # the absolute lifetime
