"""Real DICOM peers for tests and benchmarks: Orthanc and dcmtk storescp, each on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers import DCMTK, free_port, wait_for

ORTHANC = Path("/usr/sbin/Orthanc")
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}  # PITFALLS 1: or the timings lie


def dcmtk(
    tool: str, *args: object, timeout: float = 120, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run a dcmtk tool by absolute path (PITFALLS 9) with TCP_NODELAY=1; output captured."""
    return subprocess.run(
        [str(DCMTK / tool), *map(str, args)],
        env=DCMTK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


@dataclass
class OrthancPeer:
    http_port: int
    dicom_port: int
    aet: str
    workdir: Path | None = None
    proc: subprocess.Popen[bytes] | None = None

    def api(self, method: str, path: str, body: bytes | None = None) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}{path}", data=body, method=method
        )
        with urllib.request.urlopen(req, timeout=120) as rsp:  # noqa: S310
            return json.loads(rsp.read() or b"null")

    def start(self) -> None:
        """(Re)start with the same config, ports and storage."""
        assert self.workdir is not None
        with (self.workdir / "orthanc.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [ORTHANC, str(self.workdir / "orthanc.json")],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "TCP_NODELAY": "1"},
            )
        wait_for(lambda: _alive(self), 30, "Orthanc answering HTTP")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)

    def upload(self, files: list[Path]) -> str:
        """POST each file to /instances; returns Orthanc's study id."""
        study = ""
        for path in files:
            study = self.api("POST", "/instances", path.read_bytes())["ParentStudy"]
        return study


@contextmanager
def orthanc(
    workdir: Path,
    modalities: dict[str, list[Any]] | None = None,
    aet: str = "ORTHANC",
    extra: dict[str, Any] | None = None,
) -> Iterator[OrthancPeer]:
    """Orthanc with its own config and storage (PITFALLS 12: it binds all interfaces);
    ``extra`` is merged into its config (plugins, for one)."""
    workdir.mkdir(parents=True, exist_ok=True)
    peer = OrthancPeer(free_port(), free_port(), aet, workdir)
    config = {
        "Name": "dicom-node-test",
        "StorageDirectory": str(workdir / "db"),
        "IndexDirectory": str(workdir / "db"),
        "HttpPort": peer.http_port,
        "DicomPort": peer.dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "StableAge": 1,
        "Plugins": [],
        "HttpServerEnabled": True,
        "DicomAlwaysAllowStore": True,
        "DicomAlwaysAllowEcho": True,
        "StorageCompression": False,
        "SaveJobs": False,
        **(extra or {}),
    }
    (workdir / "orthanc.json").write_text(json.dumps(config))
    peer.start()
    try:
        yield peer
    finally:
        peer.stop()


def _alive(peer: OrthancPeer) -> bool:
    try:
        peer.api("GET", "/system")
    except OSError:
        return False
    return True


@contextmanager
def storescp(
    outdir: Path, *, fork: bool = False, aet: str = "STORESCP", bit_preserving: bool = False
) -> Iterator[int]:
    """dcmtk storescp on a free port; yields the port."""
    outdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [DCMTK / "storescp", "+xa", "-aet", aet, "-od", str(outdir)]
    if fork:
        args.append("--fork")
    if bit_preserving:
        args.append("+B")
    proc = subprocess.Popen(
        [*map(str, args), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TCP_NODELAY": "1"},
        start_new_session=True,
    )
    try:
        wait_for(lambda: echo_ok(port, aet), 10, "storescp listening")
        yield port
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)


def echo_ok(port: int, aet: str) -> bool:
    return dcmtk("echoscu", "-aec", aet, "127.0.0.1", port, timeout=30).returncode == 0


def write_node_config(
    path: Path,
    *,
    port: int,
    workdir: Path,
    extra: str = "",
    processes: int = 2,
    fsync: bool = True,
) -> Path:
    """A TOML config for ``dicom-node serve`` on loopback, with its data under ``workdir``;
    no rules unless ``extra`` gives some (not the default CT rule), no admin UI unless it has
    an ``[admin]`` table."""
    no_rules = "" if "[[rules]]" in extra else "rules = []\n"
    if "[admin]" not in extra:  # tests run nodes side by side: no UI unless one asks for it
        extra += "\n[admin]\nenabled = false\n"
    path.write_text(
        f'{no_rules}[node]\nhost = "127.0.0.1"\nport = {port}\nscp_processes = {processes}\n'
        f'[storage]\nroot = "{workdir / "storage"}"\nmin_free_mb = 10\n'
        f"fsync = {str(fsync).lower()}\n"
        f'[database]\nurl = "sqlite:///{workdir / "index.db"}"\n{extra}'
    )
    return path


class NodeProcess:
    """``dicom-node serve`` as a real process group (supervisor + SCP processes)."""

    def __init__(self, config: Path, log: Path | None = None) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    @property
    def report(self) -> Path | None:
        """Where its stdout goes: the start-up block (the JSON logs go to ``log``)."""
        return self.log.with_suffix(".out") if self.log else None

    def start(self) -> None:
        if self.log is None or self.report is None:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            return
        with self.log.open("ab") as err, self.report.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dicom_node", "serve", "--config", str(self.config)],
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.kills += 1

    def kill_if_running(self) -> None:
        """Whatever a failed test left running goes, and its Popen is reaped."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)
        self.check_log()

    def check_log(self) -> None:
        """Every line the node wrote is one JSON object (issue 14: no plain-text lines, no bare
        tracebacks), in every test that runs ``dicom-node serve`` with a log."""
        if self.log is None or not self.log.exists():
            return
        for number, line in enumerate(self.log.read_text(errors="replace").splitlines(), 1):
            try:
                ok = isinstance(json.loads(line), dict)
            except ValueError:
                ok = False
            assert ok, f"{self.log}:{number} is not a JSON line: {line[:300]!r}"
