"""Index rows for unit tests of the state machines: a migrated SQLite index and the rows a
received study, its job and its outbox leave, inserted directly."""

from __future__ import annotations

from datetime import datetime
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import dsutils
from sqlalchemy import Engine, insert, select

from dicom_node.db.migrate import upgrade
from dicom_node.db.models import AuditEvent, Job, Study, utcnow
from dicom_node.db.session import make_engine
from dicom_node.storage.index import Index
from dicom_node.storage.intake import Intake, StoreRequest
from dicom_node.storage.paths import StorageLayout
from dicom_node.storage.writer import AtomicWriter


def sqlite_index(tmp_path: Path) -> Engine:
    url = f"sqlite:///{tmp_path / 'index.db'}"
    upgrade(url)
    return make_engine(url)


def add_study(engine: Engine, uid: str = "1.2.3", state: str = "COMPLETE") -> int:
    now = utcnow()
    with engine.begin() as conn:
        return int(
            conn.execute(
                insert(Study).returning(Study.id),
                {
                    "study_uid": uid,
                    "state": state,
                    "first_received": now,
                    "last_received": now,
                    "opened_at": now,
                    "times_completed": 1 if state == "COMPLETE" else 0,
                },
            ).scalar_one()
        )


def add_job(
    engine: Engine,
    job_id: str = "job-1",
    *,
    study_uid: str = "1.2.3",
    state: str = "QUEUED",
    attempts: int = 0,
    max_attempts: int = 3,
    priority: int = 1,
    queued_at: datetime | None = None,
    **values: Any,
) -> str:
    with engine.connect() as conn:
        study_id = conn.execute(select(Study.id).where(Study.study_uid == study_uid)).scalar()
    if study_id is None:
        study_id = add_study(engine, study_uid)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(
            insert(Job),
            {
                "id": job_id,
                "study_id": study_id,
                "study_uid": study_uid,
                "rule": "ct",
                "model": "m",
                "series_uids": [],
                "input_key": job_id,
                "priority": priority,
                "state": state,
                "attempts": attempts,
                "max_attempts": max_attempts,
                "created_at": now,
                "queued_at": queued_at or now,
                **values,
            },
        )
    return job_id


def job(engine: Engine, job_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(Job).where(Job.id == job_id)).one()


def events(engine: Engine, entity_id: str) -> list[tuple[str, dict[str, Any]]]:
    """(event type, details) of one entity's audit events, in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            select(AuditEvent.event_type, AuditEvent.details)
            .where(AuditEvent.entity_id == entity_id)
            .order_by(AuditEvent.id)
        ).all()
    return [(str(t), dict(d or {})) for t, d in rows]


def instance(**values: object) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "PID-1"
    ds.Modality = "CT"
    ds.InstanceNumber = 1
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    return ds


def request(
    ds: Dataset, *, sop_instance: str | None = None, raw: bytes | None = None
) -> StoreRequest:
    body = raw if raw is not None else dsutils.encode(ds, False, True)
    assert body is not None
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = BytesIO()
    with_meta = Dataset()
    with_meta.file_meta = meta
    with_meta.preamble = b"\0" * 128
    with_meta.save_as(out, enforce_file_format=True)
    encoded = out.getvalue() + body
    return StoreRequest(
        affected_sop_class_uid=str(ds.SOPClassUID),
        affected_sop_instance_uid=sop_instance or str(ds.SOPInstanceUID),
        transfer_syntax_uid=ExplicitVRLittleEndian,
        dataset=lambda: dcmread(BytesIO(encoded)),
        encoded=lambda: encoded,
        association_id=None,
        raw=lambda: memoryview(body),
    )


def make_intake(engine: Engine, root: Path, *, reserve: int = 0, overwrite: bool = False) -> Intake:
    layout = StorageLayout(root)
    layout.create()
    writer = AtomicWriter(layout.incoming, fsync=False, min_free_bytes=reserve)
    return Intake(layout, writer, Index(engine), overwrite=overwrite)
