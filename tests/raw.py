"""Hostile peers' tools: raw sockets, hand-made PDUs and C-STOREs, and probes of the node's
processes (RSS, children), for the hostile-peer and fuzz suites."""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from pathlib import Path
from typing import cast

import pytest
from pydicom.uid import ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification

from tests.peers import NodeProcess

A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 0x02, 0x06])


MB = 1024 * 1024


def associate_rq(called: str = "DICOM_NODE", calling: str = "RAWSCU") -> bytes:
    """A real A-ASSOCIATE-RQ for Verification (PS3.8 §9.3.2), byte for byte."""

    def item(kind: int, value: bytes) -> bytes:
        return struct.pack(">BBH", kind, 0, len(value)) + value

    context = item(
        0x20,
        bytes([1, 0, 0, 0])
        + item(0x30, Verification.encode())
        + item(0x40, ImplicitVRLittleEndian.encode()),
    )
    user = item(0x50, item(0x51, struct.pack(">L", 16384)) + item(0x52, b"1.2.3.4"))
    body = (
        struct.pack(">HH", 1, 0)
        + called.ljust(16).encode()
        + calling.ljust(16).encode()
        + bytes(32)
        + item(0x10, b"1.2.840.10008.3.1.1.1")
        + context
        + user
    )
    return struct.pack(">BBL", 0x01, 0, len(body)) + body


def node_pids(root: int) -> list[int]:
    """The node's process and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
    except OSError:
        return "?"


def echo(port: int, timeout: float = 10) -> bool:
    ae = AE(ae_title="ECHOSCU")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0
    finally:
        assoc.release()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def read_all(s: socket.socket, timeout: float) -> bytes:
    """What the node sends until it closes the socket (or ``timeout``)."""
    s.settimeout(timeout)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except TimeoutError:
        pass
    return got


def baseline(proc: NodeProcess) -> dict[int, float]:
    """Every node process's RSS once it has settled: the embedded worker imports torch for some
    seconds after start, which is no peer's doing."""
    assert proc.proc is not None
    before = {pid: rss_mb(pid) for pid in node_pids(proc.proc.pid)}
    for _ in range(60):
        time.sleep(0.5)
        now = {pid: rss_mb(pid) for pid in node_pids(proc.proc.pid)}
        if now.keys() == before.keys() and all(abs(now[p] - before[p]) < 2 for p in now):
            return now
        before = now
    return before


def assert_rss_within(before: dict[int, float], limit_mb: float) -> None:
    for pid, mb in before.items():
        now = rss_mb(pid)
        assert now - mb < limit_mb, f"process {pid} ({cmdline(pid)}): RSS {mb:.0f} -> {now:.0f} MiB"


def json_lines(lines: list[str]) -> int:
    """How many lines parse as a JSON object; the first that does not, in the failure."""
    for line in lines:
        try:
            assert isinstance(json.loads(line), dict)
        except (ValueError, AssertionError):
            pytest.fail(f"not a JSON line in the node log: {line[:300]!r}")
    return len(lines)


def c_store_raw(
    assoc: Association, context_id: int, sop_class: str, sop_instance: str, payload: bytes
) -> C_STORE | None:
    """One C-STORE whose request UIDs and data set bytes the caller chooses, exactly as given:
    a bad sender's view. The response, or ``None`` when none came."""
    req = C_STORE()
    req.MessageID = 1
    req.AffectedSOPClassUID = sop_class
    req.AffectedSOPInstanceUID = sop_instance
    req.Priority = 2
    req.DataSet = io.BytesIO(payload)
    # Take the association's reactor off the DIMSE queue, as pynetdicom's own send_* methods do.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(req, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return cast(C_STORE | None, rsp)
