"""The composition root: ``dicom-node serve`` (the whole node on one machine) and ``dicom-node
worker`` (a Celery worker) are wired here and nowhere else; the one place to read the flow.

1. prepare: migrate the index, run the recovery scan, close associations left open by a crash;
2. receive: N SCP processes (``dicom_node.receive``) accept on the one socket the supervisor
   bound exclusively (a second node on the port does not start); it restarts any that dies;
   once receiving, the node prints what it found (``dicom_node.admin.doctor``);
3. complete: the sweeper (``dicom_node.studies``) turns evidence into COMPLETE studies and, in
   the same transaction, makes their jobs (``dicom_node.jobs``);
4. dispatch: the reconciler (``dicom_node.jobs.dispatch``) expires leases and, with a broker,
   publishes committed QUEUED job ids to Celery; with none (embedded, the default), the node's
   own worker processes (``dicom_node.jobs.embedded``) take QUEUED rows from the database;
5. infer and build results: a worker runs the model, builds SEG/SR (``workers.results``), and
   makes the job RESULTS_READY together with its outbox rows;
6. export: one sender per destination (``dicom_node.export``) C-STOREs the rows, with backoff
   and a circuit, until each is DELIVERED or visibly FAILED;
7. admin: the web UI, its JSON API and /metrics (``dicom_node.web``) on ``[admin] port``, read
   from the index; an admin's action wakes the dispatcher and the senders.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import threading
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine

from dicom_node.db.migrate import upgrade
from dicom_node.db.session import make_engine
from dicom_node.errors import StartupError
from dicom_node.export.exporter import Exporter
from dicom_node.jobs.dispatch import Dispatcher, celery_publisher
from dicom_node.jobs.embedded import EmbeddedWorkers
from dicom_node.jobs.service import create_jobs
from dicom_node.logs import get_logger
from dicom_node.loops import guarded
from dicom_node.receive.scp import serve_scp_process
from dicom_node.receive.server import listen
from dicom_node.settings import Settings
from dicom_node.storage.index import Index
from dicom_node.storage.modes import secure
from dicom_node.storage.paths import StorageLayout
from dicom_node.storage.recovery import RecoveryReport, recover
from dicom_node.studies.policy import CompletionPolicy
from dicom_node.studies.sweeper import OnComplete, Sweeper

if TYPE_CHECKING:
    from dicom_node.web.server import AdminServer

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Prepared:
    engine: Engine
    recovery: RecoveryReport
    orphaned_associations: int


def prepare(settings: Settings) -> Prepared:
    url = settings.database.url.get_secret_value()
    upgrade(url)
    engine = make_engine(url)
    report = recover(StorageLayout(settings.storage.root), engine)
    orphaned = Index(engine).close_orphaned_associations()
    return Prepared(engine, report, orphaned)


def report(settings: Settings, engine: Engine) -> None:
    """The start-up block on stdout (the JSON logs are on stderr), once the destinations have
    answered their C-ECHO; its counts also go to the log."""
    from dicom_node import __version__  # noqa: PLC0415
    from dicom_node.admin.doctor import render, startup_findings  # noqa: PLC0415

    findings = startup_findings(settings, engine)
    print(render(f"dicom-node {__version__} is receiving", findings), flush=True)
    log.info(
        "node_report",
        problems=[f"{f.topic}: {f.text}" for f in findings if f.level == "problem"],
        warnings=sum(f.level == "warning" for f in findings),
    )


def completion_policy(settings: Settings) -> CompletionPolicy:
    c = settings.completion
    return CompletionPolicy(c.quiet_period_s, c.settle_s, c.force_complete_after_s)


def job_maker(settings: Settings) -> OnComplete:
    """What happens when a study completes: its jobs are made, in the same transaction."""

    def make(conn: Connection, study_id: int, study_uid: str, at: datetime) -> list[str]:
        return create_jobs(conn, settings, (study_id, study_uid), at=at)

    return make


def scp_process_count(settings: Settings) -> int:
    return settings.node.scp_processes or os.cpu_count() or 1


@dataclass
class Stages:
    """The node's in-process stages, started by ``Node`` and stopped in reverse."""

    dispatcher: Dispatcher
    sweeper: Sweeper
    exporter: Exporter
    embedded: EmbeddedWorkers | None
    admin: AdminServer | None = None

    def wake_senders(self) -> None:
        """After an admin's action: jobs to dispatch, exports to send."""
        self.dispatcher.wake()
        self.exporter.wake()

    def stop(self) -> None:
        if self.admin is not None:
            self.admin.stop()
        self.sweeper.stop()
        self.exporter.stop()
        self.dispatcher.stop()
        if self.embedded is not None:
            self.embedded.stop()


class Node:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.processes = scp_process_count(settings)
        self._ctx = mp.get_context("spawn")
        self._children: list[BaseProcess] = []
        # each SCP process's admitted associations: max_associations is node-wide
        self._counts = self._ctx.Array("i", self.processes)
        self._listening: socket.socket | None = None  # bound in run()
        self._stop = threading.Event()

    def _spawn(self, index: int) -> BaseProcess:
        with self._counts.get_lock():
            self._counts[index] = 0  # a dead process's associations died with it
        proc = self._ctx.Process(
            target=serve_scp_process,
            args=(self.settings, self._counts, index, self._listening),
            name="dicom-node-scp",
        )
        proc.daemon = True
        proc.start()
        return proc

    def run(self) -> None:
        node = self.settings.node
        # the port first: a node that cannot have it must not start anything else
        self._listening = listen(node.host, node.port)
        try:
            secure(self.settings, create=True)  # then the data dir: modes, roots
        except OSError as exc:
            raise StartupError(
                f"cannot make the storage under {self.settings.storage.root}: {exc.strerror}; "
                "set [node] data_dir or DICOM_NODE_HOME to a folder this user may write"
            ) from None
        prepared = prepare(self.settings)
        stages = self._start_stages(prepared.engine)
        index = Index(prepared.engine)
        self._children = [self._spawn(i) for i in range(self.processes)]
        log.info(
            "node_started",
            ae_title=node.ae_title,
            host=node.host,
            port=node.port,
            scp_processes=self.processes,
            tls=self.settings.security.tls_cert is not None,
            queue="celery"
            if self.settings.queue.broker_url
            else f"embedded x{self.settings.queue.embedded_workers}",
        )
        threading.Thread(
            target=guarded,
            args=(lambda: report(self.settings, prepared.engine), "report_failed"),
            name="start-up-report",
            daemon=True,
        ).start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        while not self._stop.wait(0.5):
            self._supervise(index, stages)
        stages.stop()
        for child in self._children:
            child.terminate()
        for child in self._children:
            child.join(timeout=5)
        self._listening.close()
        log.info("node_stopped")

    def _start_stages(self, engine: Engine) -> Stages:
        """Dispatcher, embedded workers (no broker), sweeper, senders, admin app: started."""
        settings = self.settings
        broker = settings.queue.broker_url
        dispatcher = Dispatcher(engine, settings, celery_publisher(settings) if broker else None)
        dispatcher.start()
        embedded = None
        if broker is None and settings.queue.embedded_workers:
            embedded = EmbeddedWorkers(engine, settings)
            embedded.start()
        sweeper = Sweeper(
            engine,
            completion_policy(settings),
            settings.completion.sweep_interval_s,
            job_maker(settings),
            after_commit=lambda _uids: dispatcher.wake(),
        )
        sweeper.start()
        exporter = Exporter(engine, settings)
        exporter.start()
        stages = Stages(dispatcher, sweeper, exporter, embedded)
        if settings.admin.enabled:
            from dicom_node.web.server import AdminServer  # noqa: PLC0415 - FastAPI on demand

            stages.admin = AdminServer(settings, engine, stages.wake_senders)
            if not stages.admin.start_and_wait():
                stages.stop()
                a = settings.admin
                raise StartupError(
                    f"the admin UI cannot listen on {a.host}:{a.port} (in use by another "
                    "process?): give it another [admin] port, or set [admin] enabled = false"
                )
        return stages

    def _supervise(self, index: Index, stages: Stages) -> None:
        """Restart a dead SCP process (closing its associations), and the embedded workers'."""
        for i, child in enumerate(self._children):
            if not child.is_alive():
                log.error("scp_process_died", pid=child.pid, exitcode=child.exitcode)
                index.close_orphaned_associations(pid=child.pid)
                self._children[i] = self._spawn(i)
        if stages.embedded is not None:
            guarded(stages.embedded.supervise, "supervise_failed")

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._stop.set()


def run_celery_worker(settings: Settings, queues: str, concurrency: int) -> None:
    """``dicom-node worker``: a Celery worker on ``queues``. Prefork with spawned children, so
    CUDA is only ever initialised in a process that was not forked (PITFALLS 26)."""
    from workers.celery_app import app as celery_app  # noqa: PLC0415 - the worker side's seam

    celery_app.worker_main(
        [
            "worker",
            "--queues",
            queues,
            "--concurrency",
            str(concurrency),
            "--pool",
            "prefork",
            "--pool-start-method",
            "spawn",
            "--loglevel",
            settings.logging.level,
            "--hostname",
            f"{queues.replace(',', '-')}@%h",
            "--without-gossip",
            "--without-mingle",
        ]
    )
