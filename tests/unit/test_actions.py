"""The admin actions on SQLite (``dicom_node.admin.actions``), which the CLI and the web UI
both call: what each may do, the precise refusal when it may not, and the audit trail with
the admin's name."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import Engine, insert, select

from dicom_node.admin import actions
from dicom_node.db.models import AuditEvent, Export, Job, Study, utcnow
from dicom_node.settings import DestinationSettings, Settings
from dicom_node.storage.index import AssociationCache
from tests.rows import add_job, events, instance, job, make_intake, request, sqlite_index


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return sqlite_index(tmp_path)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        storage={"root": str(tmp_path / "storage")},
        rules=[{"name": "ct", "models": ["threshold"], "match": {"modality": ["CT"]}}],
        destinations=[
            DestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=free_port())
        ],
    )


def free_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def received(engine: Engine, settings: Settings, modality: str = "CT", n: int = 3) -> str:
    """A study of ``n`` instances taken in by the intake, still RECEIVING."""
    intake = make_intake(engine, Path(settings.storage.root))
    study, series = generate_uid(), generate_uid()
    for i in range(n):
        ds = instance(
            StudyInstanceUID=study,
            SeriesInstanceUID=series,
            Modality=modality,
            InstanceNumber=i,
            ImageOrientationPatient=[1, 0, 0, 0, 1, 0],  # axial, as the default rule asks
            ImagePositionPatient=[0, 0, 2.5 * i],
            PixelSpacing=[0.5, 0.5],
            Rows=16,
            Columns=16,
        )
        intake.accept(request(ds), AssociationCache())
    return study


def state_of(engine: Engine, study_uid: str) -> str:
    with engine.connect() as conn:
        return str(conn.execute(select(Study.state).where(Study.study_uid == study_uid)).scalar())


def jobs_of(engine: Engine, study_uid: str) -> list[tuple[str, str, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Job.model, Job.state).where(Job.study_uid == study_uid)
        ).all()
    return [(str(i), str(m), str(s)) for i, m, s in rows]


# --- studies --------------------------------------------------------------------------------


def test_force_complete_makes_the_study_complete_and_queues_its_jobs(
    engine: Engine, settings: Settings
) -> None:
    uid = received(engine, settings)
    assert state_of(engine, uid) == "RECEIVING"
    made = actions.force_complete(engine, settings, uid, "ada")
    assert state_of(engine, uid) == "COMPLETE"
    assert [(i, m, s) for i, m, s in jobs_of(engine, uid)] == [(made[0], "threshold", "QUEUED")]
    with engine.connect() as conn:
        completed = conn.execute(
            select(AuditEvent.actor, AuditEvent.details).where(
                AuditEvent.study_uid == uid, AuditEvent.event_type == "study.completed"
            )
        ).one()
    assert completed.actor == "ada" and completed.details["reason"] == "forced"


def test_a_complete_study_is_not_forced_again(engine: Engine, settings: Settings) -> None:
    uid = received(engine, settings)
    actions.force_complete(engine, settings, uid, "ada")
    with pytest.raises(actions.ActionError, match="already COMPLETE; use re-run"):
        actions.force_complete(engine, settings, uid, "ada")
    assert len(jobs_of(engine, uid)) == 1


def test_a_study_the_index_lacks_is_not_found(engine: Engine, settings: Settings) -> None:
    for act in (actions.force_complete, actions.rerun):
        with pytest.raises(actions.NotFoundError, match=r"no study 1\.2\.3\.4"):
            act(engine, settings, "1.2.3.4", "ada")


def test_rerun_makes_new_jobs_for_a_complete_study_only(engine: Engine, settings: Settings) -> None:
    uid = received(engine, settings)
    with pytest.raises(actions.ActionError, match="is RECEIVING: force-complete it first"):
        actions.rerun(engine, settings, uid, "ada")
    [first] = actions.force_complete(engine, settings, uid, "ada")
    [again] = actions.rerun(engine, settings, uid, "ada")
    assert again != first
    assert sorted(i for i, _, _ in jobs_of(engine, uid)) == sorted([first, again])


def test_rerun_says_so_when_no_rule_applies(engine: Engine, settings: Settings) -> None:
    uid = received(engine, settings, modality="MR")
    assert actions.force_complete(engine, settings, uid, "ada") == []  # complete, nothing to run
    with pytest.raises(actions.ActionError, match="no rule applies"):
        actions.rerun(engine, settings, uid, "ada")


# --- jobs -----------------------------------------------------------------------------------


def test_retry_puts_a_failed_job_back_with_its_attempts_from_zero(engine: Engine) -> None:
    add_job(engine, state="FAILED", attempts=3, error="GPU lost (failed 3 attempts)")
    actions.retry_job(engine, "job-1", "ada")
    row = job(engine, "job-1")
    assert (row.state, row.attempts, row.error, row.started_at) == ("QUEUED", 0, None, None)
    [(event, details)] = events(engine, "job-1")
    assert event == "job.queued" and "retry by ada" in str(details)


@pytest.mark.parametrize("state", ["QUEUED", "RUNNING", "DONE"])
def test_only_failed_or_cancelled_jobs_are_retried(engine: Engine, state: str) -> None:
    add_job(engine, state=state)
    with pytest.raises(actions.ActionError, match=f"is {state}; only FAILED or CANCELLED"):
        actions.retry_job(engine, "job-1", "ada")
    assert job(engine, "job-1").state == state


def test_cancel_takes_a_queued_or_running_job_and_nothing_else(engine: Engine) -> None:
    add_job(engine, "q", state="QUEUED")
    add_job(engine, "r", state="RUNNING", lease_expires_at=utcnow())
    add_job(engine, "d", state="DONE")
    actions.cancel_job(engine, "q", "ada")
    actions.cancel_job(engine, "r", "ada")
    assert (job(engine, "q").state, job(engine, "r").state) == ("CANCELLED", "CANCELLED")
    assert job(engine, "r").lease_expires_at is None  # the worker's lease is void
    with pytest.raises(actions.ActionError, match="only QUEUED or RUNNING"):
        actions.cancel_job(engine, "d", "ada")
    actions.retry_job(engine, "q", "ada")  # a cancelled job can be retried
    assert job(engine, "q").state == "QUEUED"


def test_a_job_the_index_lacks_is_not_found(engine: Engine) -> None:
    for act in (actions.retry_job, actions.cancel_job):
        with pytest.raises(actions.NotFoundError, match="no job nope"):
            act(engine, "nope", "ada")


# --- exports --------------------------------------------------------------------------------


def add_export(engine: Engine, export_id: str, state: str, job_id: str = "job-1") -> None:
    with engine.begin() as conn:
        conn.execute(
            insert(Export),
            {
                "id": export_id,
                "job_id": job_id,
                "study_uid": "1.2.3",
                "destination": "pacs",
                "kind": "seg",
                "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
                "sop_instance_uid": generate_uid(),
                "path": "/r/seg.dcm",
                "state": state,
                "attempts": 2,
                "max_attempts": 5,
                "created_at": utcnow(),
            },
        )


def test_resend_puts_delivered_and_failed_rows_back_to_pending(engine: Engine) -> None:
    add_job(engine, state="DONE")
    add_export(engine, "x1", "DELIVERED")
    add_export(engine, "x2", "FAILED")
    assert sorted(actions.resend(engine, "ada", job_id="job-1")) == ["x1", "x2"]
    with engine.connect() as conn:
        rows = conn.execute(select(Export.state, Export.attempts)).all()
    assert sorted(tuple(r) for r in rows) == [("PENDING", 0), ("PENDING", 0)]
    assert [e for e, _ in events(engine, "x1")] == ["export.resend"]


def test_resend_refuses_rows_still_in_flight_and_names_their_state(engine: Engine) -> None:
    add_job(engine, state="EXPORTING")
    add_export(engine, "x1", "SENDING")
    add_export(engine, "x2", "PENDING")
    with pytest.raises(actions.ActionError, match="exports are PENDING, SENDING"):
        actions.resend(engine, "ada", job_id="job-1")


def test_resend_of_what_does_not_exist_is_not_found(engine: Engine) -> None:
    with pytest.raises(actions.NotFoundError, match="no export x9"):
        actions.resend(engine, "ada", export_id="x9")
    with pytest.raises(actions.NotFoundError, match="no exports of job-9"):
        actions.resend(engine, "ada", job_id="job-9")


# --- destinations ---------------------------------------------------------------------------


# pynetdicom drops the socket of a refused connection unclosed (closed when it is collected)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_an_echo_to_a_closed_port_is_an_audited_error(engine: Engine, settings: Settings) -> None:
    error = actions.echo_destination(engine, settings, "pacs", "ada")
    assert error  # the reason, for the admin
    [(event, details)] = events(engine, "pacs")
    assert event == "destination.echo"
    assert details["ok"] is False and details["error"] == error and details["ms"] >= 0


def test_an_echo_to_an_unknown_destination_is_not_found(engine: Engine, settings: Settings) -> None:
    with pytest.raises(actions.NotFoundError, match="no destination 'nope'"):
        actions.echo_destination(engine, settings, "nope", "ada")
    assert events(engine, "nope") == []
