"""Embedded mode: no broker, the node's own child processes run the jobs.

The database is the queue: each worker process claims the next QUEUED row (stat first, then the
oldest) with the same conditional UPDATE a Celery worker uses, runs it with ``workers.runner``,
and polls again. Children are started with **spawn** (never fork: CUDA, PITFALLS 26) and die with
the node (``PR_SET_PDEATHSIG``). The node supervises them:

- a child that dies is restarted, and the job it held goes back to QUEUED (attempts counted);
- a job past the hard time limit has its child killed and FAILS with that message; the soft
  limit is a SIGALRM inside the child that FAILS the job cleanly;
- at start, RUNNING jobs left by this host's embedded workers (the node was killed) are
  requeued at once instead of waiting for their lease.
"""

from __future__ import annotations

import importlib.util
import multiprocessing as mp
import signal
import socket
import time
from datetime import timedelta
from multiprocessing.process import BaseProcess
from types import FrameType

from sqlalchemy import Engine, select

from dicom_node.children import die_with_parent
from dicom_node.db.models import Job, utcnow
from dicom_node.domain import JobState
from dicom_node.jobs.service import give_back, next_queued
from dicom_node.logs import configure, get_logger
from dicom_node.settings import Settings

log = get_logger(__name__)
PREFIX = "embedded-"
IDLE_POLL_S = 0.5


def embedded_name(pid: int) -> str:
    """The worker name an embedded child claims jobs under."""
    return f"{PREFIX}{pid}@{socket.gethostname()}"[:128]


def worker_main(settings: Settings) -> None:
    """A spawned embedded worker process: claim, run, repeat."""
    die_with_parent()
    configure(settings.logging.level, json_output=settings.logging.json_output)
    from workers.runner import JobTimeLimitError, WorkerContext, execute  # noqa: PLC0415

    def soft_limit(_signum: int, _frame: FrameType | None) -> None:
        raise JobTimeLimitError(
            f"exceeded the soft time limit of {settings.jobs.soft_time_limit_s:g} s"
        )

    signal.signal(signal.SIGALRM, soft_limit)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    ctx = WorkerContext(settings)
    me = embedded_name(mp.current_process().pid or 0)
    log.info("embedded_worker_started", worker=me)
    while True:
        ran = False
        for job_id in next_queued(ctx.engine):
            signal.setitimer(signal.ITIMER_REAL, settings.jobs.soft_time_limit_s)
            try:
                ran = execute(ctx, job_id, me) is not None
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            if ran:
                break
        if not ran:
            time.sleep(IDLE_POLL_S)


class EmbeddedWorkers:
    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.settings = settings
        self._ctx = mp.get_context("spawn")
        self.children: list[BaseProcess] = []

    def _spawn(self) -> BaseProcess:
        proc = self._ctx.Process(
            target=worker_main, args=(self.settings,), name="dicom-node-worker"
        )
        proc.daemon = True
        proc.start()
        return proc

    def start(self) -> None:
        """Requeue what this host's workers left RUNNING, then spawn the children; without torch,
        none (jobs stay QUEUED for a worker that can run them)."""
        if importlib.util.find_spec("torch") is None:
            log.error(
                "embedded_inference_disabled",
                reason="torch is not installed: pip install 'dicom-node[worker]'; "
                "jobs stay QUEUED until a worker can run them",
            )
            return
        released = release_host_orphans(self.engine)
        if released:
            log.warning("jobs_requeued_after_restart", jobs=released)
        self.children = [self._spawn() for _ in range(self.settings.queue.embedded_workers)]

    def supervise(self) -> None:
        """Called by the node's main loop: restart dead children, enforce the hard limit."""
        hard = timedelta(seconds=self.settings.jobs.hard_time_limit_s)
        for i, child in enumerate(self.children):
            name = embedded_name(child.pid or 0)
            if not child.is_alive():
                log.error("embedded_worker_died", worker=name, exitcode=child.exitcode)
                for job_id in self._running(name):
                    give_back(
                        self.engine,
                        job_id,
                        f"worker process died (exit code {child.exitcode})",
                        worker=name,
                    )
                self.children[i] = self._spawn()
                continue
            overdue = self._running(name, started_before=utcnow() - hard)
            if overdue:
                child.kill()
                child.join(5)
                for job_id in overdue:
                    give_back(
                        self.engine,
                        job_id,
                        f"exceeded the hard time limit of {hard.total_seconds():g} s: "
                        "the worker was killed",
                        permanent=True,
                        worker=name,
                    )
                self.children[i] = self._spawn()

    def _running(self, worker: str, started_before: object = None) -> list[str]:
        query = select(Job.id).where(Job.state == str(JobState.RUNNING), Job.worker == worker)
        if started_before is not None:
            query = query.where(Job.started_at < started_before)
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())

    def stop(self) -> None:
        """Terminate the children and wait for them."""
        for child in self.children:
            child.terminate()
        for child in self.children:
            child.join(5)


def release_host_orphans(engine: Engine) -> list[str]:
    """RUNNING jobs of this host's embedded workers when no worker can be alive (node start)."""
    host = socket.gethostname()
    with engine.connect() as conn:
        rows = conn.execute(
            select(Job.id, Job.worker).where(
                Job.state == str(JobState.RUNNING), Job.worker.like(f"{PREFIX}%@{host}")
            )
        ).all()
    return [
        job_id
        for job_id, worker in rows
        if give_back(engine, job_id, "node restarted while the job ran", worker=worker)
        is JobState.QUEUED
    ]
