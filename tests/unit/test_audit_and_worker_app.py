"""The audit log's writer (``dicom_node.audit.recorder``): an event and a state machine's move
written in the caller's transaction (gone with its rollback), and the Celery worker's app
(``workers.celery_app``): the task registered under the name the node sends, with the
durability options, built from the environment a worker is started with."""

from __future__ import annotations

import importlib
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from dicom_node.audit.recorder import AuditEventType, record, record_transition
from dicom_node.db.models import AuditEvent
from dicom_node.domain import JobState
from dicom_node.jobs.celery_config import RUN_JOB
from tests.rows import events, sqlite_index

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_move_is_recorded_with_from_to_reason_and_details(tmp_path: Path) -> None:
    engine = sqlite_index(tmp_path)
    with engine.begin() as conn:
        record_transition(
            conn,
            AuditEventType.JOB_REQUEUED,
            ("job", "j-1"),
            study_uid="1.2.3",
            current=JobState.RUNNING,
            target=JobState.QUEUED,
            at=T0,
            reason="lease expired",
            actor="reconciler",
            details={"worker": "w-1"},
        )
        record_transition(
            conn,
            AuditEventType.JOB_QUEUED,
            ("job", "j-2"),
            study_uid="1.2.3",
            current=None,
            target=JobState.QUEUED,
            at=T0,
            reason="study complete",
        )
    assert events(engine, "j-1") == [
        (
            "job.requeued",
            {"from": "RUNNING", "to": "QUEUED", "reason": "lease expired", "worker": "w-1"},
        )
    ]
    assert events(engine, "j-2") == [
        ("job.queued", {"from": None, "to": "QUEUED", "reason": "study complete"})
    ]
    with engine.connect() as conn:
        actor = conn.execute(select(AuditEvent.actor).where(AuditEvent.entity_id == "j-1"))
        assert actor.scalar_one() == "reconciler"


def test_an_event_is_gone_with_its_transaction(tmp_path: Path) -> None:
    engine = sqlite_index(tmp_path)
    with pytest.raises(RuntimeError), engine.begin() as conn:
        record(conn, AuditEventType.USER_ADDED, entity_type="user", entity_id="ada")
        raise RuntimeError("the action failed after its audit event")
    assert events(engine, "ada") == []


def test_the_worker_app_registers_the_task_the_node_sends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DICOM_NODE_QUEUE__BROKER_URL", "redis://127.0.0.1:6379/15")
    monkeypatch.setenv("DICOM_NODE_STORAGE__ROOT", str(tmp_path / "storage"))
    monkeypatch.delitem(sys.modules, "workers.celery_app", raising=False)
    worker_app = importlib.import_module("workers.celery_app")
    app = worker_app.app
    assert RUN_JOB in app.tasks
    assert app.tasks[RUN_JOB].run is worker_app.run_job
    assert app.conf.task_acks_late and app.conf.worker_prefetch_multiplier == 1
    assert app.conf.broker_url == "redis://127.0.0.1:6379/15"
