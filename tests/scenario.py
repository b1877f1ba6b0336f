"""The pipeline end to end with real processes: a node (embedded or Celery), a private Redis and
Celery workers, driven by the tests that need the whole chain (queue, export, admin, patterns)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
from pydicom import dcmread
from sqlalchemy import Engine, select

from dicom_node.db.models import Job
from dicom_node.db.session import make_engine
from dicom_node.domain import JobState
from tests.helpers import free_port, job_events, send_datasets, wait_for
from tests.models import build_model, expected_masks
from tests.peers import NodeProcess, write_node_config

# A model that takes seconds on this CPU (about 20,000 sliding windows), to be killed mid-run.
SLOW = "[inference]\nroi_size = [8, 64, 64]\noverlap = 0.75"


class RedisProcess:
    """A private redis-server (no persistence, like a broker that lost its memory on restart)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(self._pong, 10, "redis up")

    def _pong(self) -> bool:
        done = subprocess.run(
            ["redis-cli", "-p", str(self.port), "ping"], capture_output=True, text=True, check=False
        )
        return done.stdout.strip() == "PONG"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


class WorkerProcess:
    """``dicom-node worker -Q gpu`` as its own process group."""

    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "dicom_node",
                    "worker",
                    "-Q",
                    "gpu",
                    "--config",
                    str(self.config),
                ],
                stdout=out,
                stderr=out,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)


class Scenario:
    def __init__(
        self,
        tmp: Path,
        ct_dir: Path,
        *,
        broker: str | None,
        model_extra: str = "",
        jobs: str = "",
        model: str = "threshold",
        extra: str = "",
        port: int | None = None,
    ) -> None:
        self.tmp = tmp
        self.model = model
        self.port = port or free_port()
        build_model(tmp / "models", "threshold", "torchscript", extra=model_extra)
        queue = f'broker_url = "{broker}"\n' if broker else ""
        config = f"""
[completion]
quiet_period_s = 3.0
settle_s = 0.5
sweep_interval_s = 0.2
[jobs]
lease_s = 3.0
{jobs}
[queue]
{queue}reconcile_interval_s = 0.5
unclaimed_after_s = 4.0
[models]
root = "{tmp / "models"}"
device = "cpu"
[[rules]]
name = "ct"
models = ["{model}"]
[rules.match]
modality = ["CT"]
{extra}
"""
        self.config = write_node_config(
            tmp / "node.toml", port=self.port, workdir=tmp, extra=config
        )
        self.node = NodeProcess(self.config, tmp / "node.log")
        self.engine: Engine = make_engine(f"sqlite:///{tmp / 'index.db'}")
        self.files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")
        self.workers: list[WorkerProcess] = []
        self.copies: dict[str, str] = {}  # SOP Instance UID of a re-sent copy -> the original

    def route_to(
        self, model: str, models_root: Path, *, rule_extra: str = "", extra: str = ""
    ) -> None:
        """Rewrite the config: the ct rule runs ``model`` from ``models_root`` (``rule_extra``
        added to the rule), and ``extra`` (a destination, say) appended."""
        rule = f'name = "ct"\nmodels = ["{self.model}"]\n'
        config = self.config.read_text()
        assert rule in config
        self.config.write_text(
            config.replace(rule, f'name = "ct"\nmodels = ["{model}"]\n{rule_extra}').replace(
                f'root = "{self.tmp / "models"}"', f'root = "{models_root}"'
            )
            + extra
        )

    def worker(self) -> WorkerProcess:
        w = WorkerProcess(self.config, self.tmp / f"worker{len(self.workers)}.log")
        w.start()
        self.workers.append(w)
        return w

    def send(self, study_uid: str | None = None) -> str:
        datasets = [dcmread(p) for p in self.files]
        if study_uid:  # the same pixels as another study (the node sees new instances)
            from pydicom.uid import generate_uid  # noqa: PLC0415

            series = generate_uid()
            for ds in datasets:
                ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series
                original = ds.SOPInstanceUID
                ds.SOPInstanceUID = generate_uid()
                self.copies[ds.SOPInstanceUID] = original
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        wait_for(lambda: _listening(self.port), 20, "node listening")
        try:
            codes = send_datasets(self.port, datasets)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; node log tail: {self.log_tail()}") from exc
        assert set(codes) == {0}, f"statuses {codes}; node log tail: {self.log_tail()}"
        return str(datasets[0].StudyInstanceUID)

    def job_state(self, job_id: str) -> str | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Job.state).where(Job.id == job_id)).scalar()

    def listening(self) -> bool:
        return _listening(self.port)

    def job(self, study_uid: str) -> Job | None:
        with self.engine.connect() as conn:
            return conn.execute(select(Job).where(Job.study_uid == study_uid)).first()  # type: ignore[return-value]

    def wait_state(self, study_uid: str, state: JobState, timeout: float) -> Job:
        wait_for(
            lambda: (j := self.job(study_uid)) is not None and j.state == str(state),
            timeout,
            f"job {state}; node log tail: {self.log_tail()}",
        )
        job = self.job(study_uid)
        assert job is not None
        return job

    def events(self, job_id: str) -> list[str]:
        return job_events(self.engine, job_id)

    def log_tail(self) -> str:
        logs = [self.tmp / "node.log", *(w.log for w in self.workers)]
        return " | ".join(p.read_text()[-1500:] for p in logs if p.exists())

    def check_mask(self, job: Job) -> None:
        assert job.result is not None
        [series] = job.result["series"]
        saved = np.load(Path(job.result["path"]) / series["mask"])
        expected = expected_masks(self.files)
        uids = [self.copies.get(str(uid), str(uid)) for uid in saved["sop_instance_uids"]]
        want = np.stack([expected[uid] for uid in uids])
        np.testing.assert_array_equal(saved["labels"], want)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.node.proc is not None and self.node.proc.poll() is None:
            self.node.stop()
        self.engine.dispose()


def _listening(port: int) -> bool:
    import socket  # noqa: PLC0415

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def destination(name: str, aet: str, port: int, **extra: object) -> str:
    lines = [
        "[[destinations]]",
        f'name = "{name}"',
        f'ae_title = "{aet}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        *(f"{k} = {v}" for k, v in extra.items()),
    ]
    return "\n".join(lines) + "\n"
