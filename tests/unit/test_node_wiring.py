"""The composition root (``dicom_node.node``) and what it wires, without SCP processes: start-up
preparation (migrate, recover a file the index lacks, close associations a crash left open), the
job maker the sweeper calls, the in-process stages started and stopped with the admin UI
answering over HTTP, and the Celery configuration the node and the workers share."""

from __future__ import annotations

import shutil
import socket
import urllib.request
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, insert, select

from dicom_node import node as wiring
from dicom_node.db.models import Association, Instance, Job, utcnow
from dicom_node.db.session import make_engine
from dicom_node.jobs.celery_config import GPU_QUEUE, RUN_JOB, celery_options, make_celery
from dicom_node.settings import Settings
from dicom_node.web.server import AdminServer
from tests.rows import add_study, sqlite_index


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(
        storage={"root": str(tmp_path / "storage")},  # type: ignore[arg-type]
        database={"url": f"sqlite:///{tmp_path / 'index.db'}"},  # type: ignore[arg-type]
        **values,  # type: ignore[arg-type]
    )


def test_prepare_migrates_recovers_and_closes_orphans(tmp_path: Path, ct_slice: Path) -> None:
    s = settings(tmp_path)
    engine = sqlite_index(tmp_path)
    with engine.begin() as conn:
        conn.execute(
            insert(Association),
            {
                "id": "left-open",
                "calling_ae": "CT1",
                "called_ae": "NODE",
                "peer_host": "127.0.0.1",
                "peer_port": 1,
                "pid": 1,
                "started_at": utcnow(),
            },
        )
    ds = dcmread(ct_slice, stop_before_pixels=True)
    # a file that was stored and fsynced, but whose index row the crash lost
    folder = tmp_path / "storage/instances" / ds.StudyInstanceUID / ds.SeriesInstanceUID
    folder.mkdir(parents=True)
    shutil.copy(ct_slice, folder / f"{ds.SOPInstanceUID}.dcm")
    prepared = wiring.prepare(s)
    assert prepared.orphaned_associations == 1
    stored = f"instances/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
    assert prepared.recovery.indexed == [stored]
    with prepared.engine.connect() as conn:
        assert conn.execute(select(func.count(Instance.id))).scalar_one() == 1
        ended = conn.execute(select(Association.ended_at)).scalar_one()
    assert ended is not None


def test_the_job_maker_makes_the_rules_jobs_in_the_callers_transaction(tmp_path: Path) -> None:
    s = settings(tmp_path)
    engine = sqlite_index(tmp_path)
    study = add_study(engine, "1.2.3")
    make = wiring.job_maker(s)
    with engine.begin() as conn:
        assert make(conn, study, "1.2.3", utcnow()) == []  # no series: no rule applies
    with engine.connect() as conn:
        assert conn.execute(select(func.count(Job.id))).scalar_one() == 0


def test_policy_and_process_count_come_from_the_settings(tmp_path: Path) -> None:
    s = settings(tmp_path, completion={"quiet_period_s": 90, "settle_s": 4})
    policy = wiring.completion_policy(s)
    assert (policy.quiet_period_s, policy.settle_s) == (90, 4)
    assert wiring.scp_process_count(settings(tmp_path, node={"scp_processes": 3})) == 3
    assert wiring.scp_process_count(s) >= 1  # 0: one per CPU


def test_the_stages_start_serve_the_admin_ui_and_stop(tmp_path: Path) -> None:
    port = free_port()
    s = settings(tmp_path, admin={"port": port, "host": "127.0.0.1"})
    engine = sqlite_index(tmp_path)
    stages = wiring.Node(s)._start_stages(engine)
    try:
        assert stages.embedded is not None  # no broker: the node's own workers
        assert stages.admin is not None and stages.admin.is_alive()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/login", timeout=5) as page:
            assert page.status == 200 and b"csrf_token" in page.read()
        stages.wake_senders()
    finally:
        stages.stop()
    assert not stages.admin.is_alive()
    assert not stages.sweeper.is_alive() and not stages.dispatcher.is_alive()


def test_an_admin_port_in_use_is_reported_not_started(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        s = settings(tmp_path, admin={"port": port, "host": "127.0.0.1"})
        server = AdminServer(s, make_engine(f"sqlite:///{tmp_path / 'index.db'}"))
        assert server.start_and_wait(timeout_s=5) is False
        server.join(timeout=5)
        assert not server.is_alive()


def test_celery_is_configured_for_durable_single_prefetch_jobs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="embedded mode"):
        make_celery(settings(tmp_path))
    s = settings(tmp_path, queue={"broker_url": "redis://127.0.0.1:6379/0"})
    options = celery_options(s)
    assert options["task_acks_late"] and options["task_reject_on_worker_lost"]
    assert options["worker_prefetch_multiplier"] == 1
    assert options["accept_content"] == ["json"]
    visibility = options["broker_transport_options"]["visibility_timeout"]
    assert visibility > options["task_time_limit"] > options["task_soft_time_limit"]
    assert options["task_routes"] == {RUN_JOB: {"queue": GPU_QUEUE}}
    app = make_celery(s)
    assert app.conf.task_default_queue == GPU_QUEUE
