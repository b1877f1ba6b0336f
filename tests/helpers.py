"""Shared test helpers: real peers on loopback, no sleeps without a predicate."""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_preamble
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import Engine, select

from dicom_node.admin.read import studies as read_studies
from dicom_node.db.models import AuditEvent
from dicom_node.node import completion_policy, job_maker, prepare
from dicom_node.receive.scp import Scp, build_scp
from dicom_node.settings import Settings, load_settings
from dicom_node.studies.sweeper import Sweeper

REPO = Path(__file__).resolve().parents[1]
DCMTK = Path("/usr/bin")  # PITFALLS 9: pynetdicom's console scripts shadow dcmtk's names
NODE_AE = "DICOM_NODE"


FETCHED_TESTDATA = Path.home() / ".cache" / "dicom-node" / "testdata"  # tools/fetch_testdata.py


def testdata_root() -> Path | None:
    """``DICOM_NODE_TESTDATA``; else ``../shared/testdata`` beside the clone; else where the
    fetch command puts it. ``None`` when none of them is there."""
    configured = os.environ.get("DICOM_NODE_TESTDATA")
    if configured:
        return Path(configured) if Path(configured).is_dir() else None
    for root in (REPO.parent / "shared" / "testdata", FETCHED_TESTDATA):
        if root.is_dir():
            return root
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message}")
        time.sleep(interval)


def node_settings(tmp: Path, db_url: str | None = None, **sections: Any) -> Settings:
    base: dict[str, Any] = {
        "rules": [],  # not the default CT rule: a test names the rules it wants
        "node": {"host": "127.0.0.1", "port": free_port(), "scp_processes": 1},
        "storage": {"root": str(tmp / "storage"), "min_free_mb": 10},
        "database": {"url": db_url or f"sqlite:///{tmp / 'index.db'}"},
        "completion": {"quiet_period_s": 4.0, "settle_s": 1.0, "sweep_interval_s": 0.1},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            base.setdefault(name, {}).update(values)
        else:
            base[name] = values  # a list of tables, e.g. rules
    return load_settings(**base)


@dataclass
class RunningNode:
    settings: Settings
    engine: Engine
    scp: Scp
    sweeper: Sweeper | None

    @property
    def port(self) -> int:
        return self.settings.node.port

    @property
    def root(self) -> Path:
        return Path(self.settings.storage.root)

    def studies(self) -> list[dict[str, Any]]:
        rows = read_studies.studies(
            self.engine, read_studies.StudyFilter(limit=1000), show_accession=False
        )
        return [asdict(r) for r in rows]

    def study(self, uid: str) -> dict[str, Any] | None:
        return next((s for s in self.studies() if s["study_uid"] == uid), None)

    def stop(self) -> None:
        if self.sweeper is not None:
            self.sweeper.stop()
        self.scp.server.shutdown()
        self.scp.server.server_close()
        self.engine.dispose()


def start_node(settings: Settings, *, sweeper: bool = True) -> RunningNode:
    """The node's SCP and sweeper in this process (pynetdicom's own test pattern)."""
    prepared = prepare(settings)
    scp = build_scp(settings, engine=prepared.engine)
    threading.Thread(
        target=scp.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    ).start()
    sw = None
    if sweeper:
        sw = Sweeper(
            prepared.engine,
            completion_policy(settings),
            settings.completion.sweep_interval_s,
            job_maker(settings),
        )
        sw.start()
    return RunningNode(settings, prepared.engine, scp, sw)


def scu(calling: str = "TESTSCU", syntaxes: Iterable[str] = (ExplicitVRLittleEndian,)) -> AE:
    from pynetdicom import StoragePresentationContexts  # noqa: PLC0415
    from pynetdicom.sop_class import Verification  # noqa: PLC0415

    ae = AE(ae_title=calling)
    ae.requested_contexts = [
        *[_ctx(cx.abstract_syntax, syntaxes) for cx in StoragePresentationContexts[:127]],
        _ctx(Verification, syntaxes),
    ]
    # A test checks what the node answers, not how fast (bench/ does speed): a disk stall on a
    # shared CI machine must not turn into a sender-side abort. The node logs c_store_slow.
    ae.acse_timeout = 30
    ae.dimse_timeout = ae.network_timeout = 120
    return ae


def _ctx(abstract: Any, syntaxes: Iterable[str]) -> Any:
    from pynetdicom.presentation import build_context  # noqa: PLC0415

    return build_context(abstract, list(syntaxes))


def send_datasets(
    port: int, datasets: Iterable[Dataset], *, calling: str = "TESTSCU", pause_s: float = 0.0
) -> list[int]:
    """One association; returns each C-STORE's status."""
    ae = scu(calling, syntaxes=[ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established, "association not established"
    codes = []
    try:
        for ds in datasets:
            assert assoc.is_established, (
                f"association ended after {len(codes)} C-STORE(s), statuses {codes}"
                f" (aborted: {assoc.is_aborted}, released: {assoc.is_released})"
            )
            status = assoc.send_c_store(ds)
            codes.append(int(status.Status) if status else -1)
            if pause_s:
                time.sleep(pause_s)
    finally:
        assoc.release()
    return codes


def fresh_series(template: Path, count: int, study_uid: str | None = None) -> list[Dataset]:
    """``count`` real CT slices re-identified into one new series (pixel data unchanged)."""
    src = dcmread(template)
    study_uid = study_uid or generate_uid()
    series_uid = generate_uid()
    out = []
    for i in range(count):
        ds = copy.deepcopy(src)
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = i + 1
        out.append(ds)
    return out


def unique_name() -> str:
    return uuid.uuid4().hex[:8]


def job_events(engine: Engine, entity_id: str) -> list[str]:
    """Audit event types of one job (or export), oldest first."""
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(AuditEvent.event_type)
                .where(AuditEvent.entity_id == entity_id)
                .order_by(AuditEvent.id)
            ).scalars()
        )


def cli(
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    """``dicom-node ARGS [--config CONFIG]`` in a child process, with ``env`` added."""
    extra = ["--config", str(config)] if config else []
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args, *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


class HasSettings(Protocol):
    @property
    def settings(self) -> Settings: ...


def config_for(node: HasSettings, tmp_path: Path) -> Path:
    """A config file that points the CLI at ``node``'s port, storage and index."""
    cfg = tmp_path / "node.toml"
    s = node.settings
    cfg.write_text(
        f'[node]\nport = {s.node.port}\n[storage]\nroot = "{s.storage.root}"\n'
        f'[database]\nurl = "{s.database.url.get_secret_value()}"\n'
    )
    return cfg


TRAILING_PADDING = 0xFFFCFFFC


def dataset_bytes(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, the data set's bytes after the file meta) of a Part 10 file."""
    ds = dcmread(path, stop_before_pixels=True)
    with path.open("rb") as fh:
        read_preamble(fh, force=False)
        from pydicom.filereader import _read_file_meta_info  # noqa: PLC0415

        _read_file_meta_info(fh)
        return str(ds.file_meta.TransferSyntaxUID), fh.read()


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


def dsrdump_ok(path: Path) -> tuple[int, str]:
    done = subprocess.run(["dsrdump", str(path)], capture_output=True, text=True, check=False)
    return done.returncode, done.stderr
