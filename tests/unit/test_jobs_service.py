"""The job state machine on SQLite: claim, lease, give back, expire, dispatch order and the
RESULTS_READY step, each move conditional and audited (``dicom_node.jobs.service``)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, update

from dicom_node.db.models import Job, utcnow
from dicom_node.domain import IllegalTransitionError, JobState
from dicom_node.jobs import service
from dicom_node.results import BuiltResults, JobSummary, ObjectKind, ResultObject
from dicom_node.settings import DestinationSettings, JobSettings
from tests.rows import add_job, events, job, sqlite_index

LEASE = JobSettings(lease_s=60)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return sqlite_index(tmp_path)


def test_a_queued_job_is_claimed_once_with_a_lease(engine: Engine) -> None:
    add_job(engine)
    assert service.claim(engine, "job-1", "w1", LEASE)
    assert not service.claim(engine, "job-1", "w2", LEASE)  # the loser moves nothing
    row = job(engine, "job-1")
    assert (row.state, row.worker, row.attempts) == ("RUNNING", "w1", 1)
    assert row.lease_expires_at > utcnow() + timedelta(seconds=50)
    assert [e for e, _ in events(engine, "job-1")] == ["job.running"]


def test_only_the_lease_holder_extends_it(engine: Engine) -> None:
    add_job(engine)
    service.claim(engine, "job-1", "w1", LEASE)
    assert service.heartbeat(engine, "job-1", "w1", LEASE)
    assert not service.heartbeat(engine, "job-1", "w2", LEASE)


def test_give_back_requeues_until_the_attempts_are_used_up(engine: Engine) -> None:
    add_job(engine, max_attempts=2)
    service.claim(engine, "job-1", "w1", LEASE)
    assert service.give_back(engine, "job-1", "GPU lost", worker="w1") is JobState.QUEUED
    row = job(engine, "job-1")
    assert (row.state, row.worker, row.error) == ("QUEUED", None, "GPU lost")
    service.claim(engine, "job-1", "w2", LEASE)
    assert service.give_back(engine, "job-1", "GPU lost", worker="w2") is JobState.FAILED
    assert job(engine, "job-1").error == "GPU lost (failed 2 attempts)"
    trail = [e for e, _ in events(engine, "job-1")]
    assert trail == ["job.running", "job.requeued", "job.running", "job.failed"]


def test_a_permanent_error_fails_at_once_and_a_stale_worker_moves_nothing(engine: Engine) -> None:
    add_job(engine, max_attempts=5)
    service.claim(engine, "job-1", "w1", LEASE)
    assert service.give_back(engine, "job-1", "bad input", worker="w2") is None
    assert service.give_back(engine, "job-1", "bad input", permanent=True) is JobState.FAILED
    assert job(engine, "job-1").error == "bad input"


def test_expired_leases_are_requeued_and_then_fail(engine: Engine) -> None:
    past = utcnow() - timedelta(seconds=1)
    add_job(engine, "a", state="RUNNING", attempts=1, worker="w", lease_expires_at=past)
    add_job(engine, "b", state="RUNNING", attempts=3, worker="w", lease_expires_at=past)
    later = utcnow() + timedelta(seconds=60)
    add_job(engine, "c", state="RUNNING", attempts=1, worker="w", lease_expires_at=later)
    assert service.expire_leases(engine) == ["a"]
    assert [job(engine, j).state for j in "abc"] == ["QUEUED", "FAILED", "RUNNING"]
    assert "lease expired" in (job(engine, "b").error or "")


def test_dispatch_order_is_priority_then_age_and_resends_the_unclaimed(engine: Engine) -> None:
    now = utcnow()
    add_job(engine, "late-routine", priority=2, queued_at=now)
    add_job(engine, "early-routine", priority=2, queued_at=now - timedelta(minutes=5))
    add_job(engine, "stat", priority=0, queued_at=now)
    order = ["stat", "early-routine", "late-routine"]
    assert service.due_for_enqueue(engine, unclaimed_after_s=60) == order
    assert service.next_queued(engine) == order
    service.mark_enqueued(engine, order)
    assert service.due_for_enqueue(engine, unclaimed_after_s=60) == []
    with engine.begin() as conn:  # a broker that lost the message: sent long ago, unclaimed
        conn.execute(
            update(Job).where(Job.id == "stat").values(enqueued_at=now - timedelta(minutes=2))
        )
    assert service.due_for_enqueue(engine, unclaimed_after_s=60) == ["stat"]


def test_the_transition_table_refuses_an_unknown_move(engine: Engine) -> None:
    add_job(engine, state="DONE")
    with engine.begin() as conn, pytest.raises(IllegalTransitionError):
        service.transition_job(
            conn, "job-1", JobState.DONE, JobState.RUNNING, at=utcnow(), reason="x"
        )


def _summary(objects: tuple[ResultObject, ...]) -> JobSummary:
    return JobSummary(
        model="m",
        version="1",
        weights_sha256="00",
        device="cpu",
        attempt=1,
        path="/results/job-1/attempt-1",
        series=(),
        results=BuiltResults({"default": objects}),
    )


SEG = ResultObject(ObjectKind.SEG, "/r/seg.dcm", "1.2.840.10008.5.1.4.1.1.66.4", "9.1", "1.2.4")
PACS = DestinationSettings(name="pacs", ae_title="PACS", host="127.0.0.1", port=104)


def test_results_ready_stores_the_summary_and_makes_the_exports_in_one_step(
    engine: Engine,
) -> None:
    add_job(engine)
    service.claim(engine, "job-1", "w1", LEASE)
    made: list[dict[str, Any]] = []

    def make_exports(conn: Connection, **kwargs: Any) -> list[str]:
        made.append(kwargs)
        return ["export-1"]

    summary = _summary((SEG,))
    assert service.results_ready(
        engine, "job-1", "w1", summary, study_uid="1.2.3", destinations=[PACS],
        make_exports=make_exports,
    )  # fmt: skip
    row = job(engine, "job-1")
    assert row.state == "RESULTS_READY" and row.lease_expires_at is None
    assert JobSummary.from_json(row.result) == summary  # the row holds the contract, whole
    assert made[0]["objects"] == {"default": (SEG,)} and made[0]["destinations"] == [PACS]


def test_results_ready_with_no_destination_is_done_and_a_lost_job_moves_nothing(
    engine: Engine,
) -> None:
    add_job(engine, "mine")
    add_job(engine, "lost")
    service.claim(engine, "mine", "w1", LEASE)
    service.claim(engine, "lost", "w2", LEASE)
    none = lambda conn, **kwargs: []  # noqa: E731 - no destination takes anything
    assert service.results_ready(
        engine, "mine", "w1", _summary((SEG,)), study_uid="1.2.3", destinations=[],
        make_exports=none,
    )  # fmt: skip
    assert job(engine, "mine").state == "DONE"
    assert events(engine, "mine")[-1][1]["reason"].startswith("no destination configured")
    assert not service.results_ready(
        engine, "lost", "w1", _summary(()), study_uid="1.2.3", destinations=[], make_exports=none
    )
    assert job(engine, "lost").state == "RUNNING" and job(engine, "lost").result is None
