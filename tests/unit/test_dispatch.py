"""The reconciler and the embedded supervisor on SQLite (``dicom_node.jobs.dispatch``,
``dicom_node.jobs.embedded``): queued jobs reach a worker whatever was lost, a dead broker
loses nothing, and a dead or overdue worker process gives its job back."""

from __future__ import annotations

import multiprocessing as mp
import socket
import time
from datetime import timedelta
from multiprocessing.process import BaseProcess
from pathlib import Path

import pytest
from sqlalchemy import Engine

from dicom_node.db.models import utcnow
from dicom_node.jobs.dispatch import BrokerUnavailableError, Dispatcher
from dicom_node.jobs.embedded import EmbeddedWorkers, embedded_name, release_host_orphans
from dicom_node.settings import Settings
from tests.rows import add_job, events, job, sqlite_index

SETTINGS = Settings(
    queue={"unclaimed_after_s": 60.0}, jobs={"soft_time_limit_s": 300.0, "hard_time_limit_s": 600.0}
)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return sqlite_index(tmp_path)


class Broker:
    """The publishing seam: records what was sent, or fails like a dead Redis."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.down = False

    def __call__(self, job_id: str) -> None:
        if self.down:
            raise BrokerUnavailableError("ConnectionError: Error 111 connecting to 127.0.0.1:6379")
        self.sent.append(job_id)


# --- the reconciler -------------------------------------------------------------------------


def test_queued_jobs_are_published_stat_first_then_oldest_and_stamped(engine: Engine) -> None:
    now = utcnow()
    add_job(engine, "old", queued_at=now - timedelta(minutes=5))
    add_job(engine, "new", queued_at=now)
    add_job(engine, "stat", priority=0, queued_at=now)
    add_job(engine, "done", state="DONE")
    broker = Broker()
    assert Dispatcher(engine, SETTINGS, broker).pass_once() == ["stat", "old", "new"]
    assert broker.sent == ["stat", "old", "new"]
    assert all(job(engine, j).enqueued_at is not None for j in broker.sent)


def test_a_published_job_is_sent_again_only_once_it_stays_unclaimed(engine: Engine) -> None:
    add_job(engine, "a")
    broker = Broker()
    dispatcher = Dispatcher(engine, SETTINGS, broker)
    dispatcher.pass_once()
    assert dispatcher.pass_once() == []  # sent a moment ago: the worker may be busy
    add_job(engine, "lost", enqueued_at=utcnow() - timedelta(seconds=61))
    assert dispatcher.pass_once() == ["lost"]  # a flushed Redis, a lost message


def test_a_dead_broker_loses_nothing_and_the_next_pass_sends_the_same_jobs(
    engine: Engine,
) -> None:
    add_job(engine, "a")
    add_job(engine, "b")
    broker = Broker()
    broker.down = True
    dispatcher = Dispatcher(engine, SETTINGS, broker)
    assert dispatcher.pass_once() == []
    assert dispatcher.pass_once() == []
    assert [job(engine, j).enqueued_at for j in ("a", "b")] == [None, None]
    broker.down = False
    assert sorted(dispatcher.pass_once()) == ["a", "b"]


def test_expired_leases_go_back_to_the_queue_even_in_embedded_mode(engine: Engine) -> None:
    past = utcnow() - timedelta(seconds=1)
    add_job(engine, "held", state="RUNNING", attempts=1, worker="w1", lease_expires_at=past)
    add_job(engine, "spent", state="RUNNING", attempts=3, worker="w1", lease_expires_at=past)
    add_job(
        engine,
        "fresh",
        state="RUNNING",
        attempts=1,
        worker="w2",
        lease_expires_at=utcnow() + timedelta(minutes=1),
    )
    assert Dispatcher(engine, SETTINGS, None).pass_once() == []  # embedded: nothing to publish
    assert (job(engine, "held").state, job(engine, "held").error) == (
        "QUEUED",
        "lease expired: the worker stopped answering",
    )
    assert job(engine, "spent").state == "FAILED"
    assert job(engine, "fresh").state == "RUNNING"
    assert [e for e, _ in events(engine, "held")] == ["job.requeued"]


# --- the embedded supervisor ----------------------------------------------------------------


def _exit_with(code: int) -> None:
    raise SystemExit(code)


def _sleep() -> None:
    time.sleep(60)


class Supervised(EmbeddedWorkers):
    """The supervisor with plain child processes in place of inference workers."""

    def __init__(self, engine: Engine, targets: list[object]) -> None:
        super().__init__(engine, SETTINGS)
        self.targets = targets
        self.spawned: list[BaseProcess] = []

    def _spawn(self) -> BaseProcess:
        target = self.targets.pop(0) if self.targets else _sleep
        proc = mp.get_context("spawn").Process(target=target, daemon=True)
        proc.start()
        self.spawned.append(proc)
        return proc


def test_a_dead_child_gives_its_job_back_and_is_replaced(engine: Engine) -> None:
    workers = Supervised(engine, [_exit_with])
    workers.children = [workers._spawn()]
    dead = workers.children[0]
    dead.join(30)
    add_job(
        engine,
        state="RUNNING",
        attempts=1,
        worker=embedded_name(dead.pid or 0),
        started_at=utcnow(),
    )
    try:
        workers.supervise()
        row = job(engine, "job-1")
        assert (row.state, row.worker) == ("QUEUED", None)
        assert row.error == f"worker process died (exit code {dead.exitcode})"
        assert workers.children[0] is not dead and workers.children[0].is_alive()
    finally:
        workers.stop()


def test_a_job_past_the_hard_limit_has_its_child_killed_and_fails(engine: Engine) -> None:
    workers = Supervised(engine, [_sleep])
    workers.children = [workers._spawn()]
    child = workers.children[0]
    add_job(
        engine,
        state="RUNNING",
        attempts=1,
        worker=embedded_name(child.pid or 0),
        started_at=utcnow() - timedelta(seconds=601),
    )
    try:
        workers.supervise()
        assert not child.is_alive()
        row = job(engine, "job-1")
        assert row.state == "FAILED"
        assert row.error.startswith("exceeded the hard time limit of 600 s: the worker was killed")
        assert len(workers.spawned) == 2  # replaced
    finally:
        workers.stop()


def test_at_start_this_hosts_orphans_are_requeued_and_no_other_host_is_touched(
    engine: Engine,
) -> None:
    host = socket.gethostname()
    add_job(engine, "mine", state="RUNNING", attempts=1, worker=f"embedded-4242@{host}")
    add_job(engine, "theirs", state="RUNNING", attempts=1, worker="embedded-4242@elsewhere")
    add_job(engine, "celery", state="RUNNING", attempts=1, worker=f"celery@{host}")
    assert release_host_orphans(engine) == ["mine"]
    assert job(engine, "mine").error == "node restarted while the job ran"
    assert (job(engine, "theirs").state, job(engine, "celery").state) == ("RUNNING", "RUNNING")


def test_worker_names_carry_the_pid_and_host() -> None:
    assert embedded_name(31) == f"embedded-31@{socket.gethostname()}"[:128]
