"""kill -9 while four senders push: every acknowledged instance survives, byte for byte.

The node runs as ``dicom-node serve`` (supervisor + 2 SCP processes) and is killed with SIGKILL
(whole process group) at random moments, then restarted. Senders re-send whatever was not
acknowledged, as a modality would. Opt-in: DICOM_NODE_SOAK_INSTANCES instances (CI: 1,000).
"""

from __future__ import annotations

import copy
import gc
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import dsutils
from sqlalchemy import create_engine, select

from dicom_node.db.models import Instance
from tests.helpers import NODE_AE, dataset_bytes, free_port, scu, wait_for
from tests.peers import NodeProcess, echo_ok, write_node_config

pytestmark = [
    pytest.mark.soak(size="DICOM_NODE_SOAK_INSTANCES"),
    # pynetdicom (the test's own SCU) leaks its socket when the peer is killed mid-association.
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

SENDERS = 4
KILLS = 8  # then the senders finish undisturbed: the run is bounded however slow the machine


def soak_size() -> int:
    return int(os.environ.get("DICOM_NODE_SOAK_INSTANCES", "0"))


def make_instances(templates: list[Path], count: int) -> list[tuple[Dataset, bytes]]:
    """Real MR slices, re-identified into 4 studies; with the exact bytes each will be sent as."""
    sources = [dcmread(p) for p in templates]
    studies = [(generate_uid(), generate_uid()) for _ in range(SENDERS)]
    out = []
    for i in range(count):
        ds = copy.deepcopy(sources[i % len(sources)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = studies[i % SENDERS]
        ds.SOPInstanceUID = generate_uid()
        encoded = dsutils.encode(ds, False, True)
        assert encoded is not None
        out.append((ds, encoded))
    return out


def _close_socket(assoc: Any) -> None:
    sock = assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.close()


class Senders:
    """Modalities that keep re-sending whatever was not acknowledged."""

    def __init__(self, port: int, instances: list[tuple[Dataset, bytes]]) -> None:
        self.port = port
        self.work: queue.Queue[tuple[Dataset, bytes]] = queue.Queue()
        for item in instances:
            self.work.put(item)
        self.acked: dict[str, bytes] = {}
        self.refused: list[int] = []
        self.lock = threading.Lock()

    def run(self, deadline: float) -> None:
        ae = scu(f"SENDER{threading.get_ident() % 1000}", syntaxes=[ExplicitVRLittleEndian])
        ae.dimse_timeout = ae.acse_timeout = ae.network_timeout = 5
        pending: list[tuple[Dataset, bytes]] = []
        while time.monotonic() < deadline:
            if not pending:
                try:
                    pending.append(self.work.get_nowait())
                except queue.Empty:
                    return
            assoc = ae.associate("127.0.0.1", self.port, ae_title=NODE_AE)
            if not assoc.is_established:
                _close_socket(assoc)  # pynetdicom leaves a failed connect's socket open
                time.sleep(0.1)
                continue
            try:
                self._send_all(assoc, pending)
            finally:
                if assoc.is_established:
                    assoc.release()
                else:
                    assoc.abort()
                _close_socket(assoc)

    def _send_all(self, assoc: Any, pending: list[tuple[Dataset, bytes]]) -> None:
        """Send on one association until the queue is empty or the association is lost."""
        while pending or not self.work.empty():
            if not pending:
                try:
                    pending.append(self.work.get_nowait())
                except queue.Empty:
                    return
            ds, encoded = pending[0]
            try:
                status = assoc.send_c_store(ds)
            except (RuntimeError, OSError):
                return  # the node died under us: re-send on a new association
            if not assoc.is_established or "Status" not in status:
                return
            if status.Status & 0xFF00 == 0xA700:  # out of resources: retry later
                time.sleep(0.05)
                return
            if status.Status != 0x0000:
                self.refused.append(int(status.Status))  # permanent: the test fails
            else:
                with self.lock:
                    self.acked[str(ds.SOPInstanceUID)] = encoded
            pending.pop(0)


@pytest.mark.timeout(900)
def test_kill_9_loses_no_acknowledged_instance(tmp_path: Path, testdata: Path) -> None:
    templates = sorted((testdata / "dcm_qa_decubitus/In/HFS/3_t1_fl2d_sag").iterdir())
    instances = make_instances(templates, soak_size())
    port = free_port()
    config = write_node_config(
        tmp_path / "node.toml", port=port, workdir=tmp_path, extra='[logging]\nlevel = "WARNING"\n'
    )
    node = NodeProcess(config, tmp_path / "node.log")
    try:
        senders = crash_while_sending(node, port, instances)
    finally:
        node.kill_if_running()  # a failed run leaves no node behind for the next test
    print(
        f"\ncrash soak: {len(instances)} instances, {len(senders.acked)} acknowledged, "
        f"{node.kills} kill -9s"
    )
    assert senders.refused == []
    assert node.kills >= 3
    check_survivors(tmp_path, instances, senders)


def crash_while_sending(
    node: NodeProcess, port: int, instances: list[tuple[Dataset, bytes]]
) -> Senders:
    """KILLS kill -9s at random moments while the senders push, then they finish in peace."""
    node.start()
    wait_for(lambda: echo_ok(port, NODE_AE), 30, "node up")
    senders = Senders(port, instances)
    deadline = time.monotonic() + 600
    threads = [threading.Thread(target=senders.run, args=(deadline,)) for _ in range(SENDERS)]
    errors: list[BaseException] = []
    threading.excepthook = lambda args: errors.append(args.exc_value)  # type: ignore[assignment,misc,arg-type]
    for t in threads:
        t.start()
    rng = random.Random(20261122)
    while any(t.is_alive() for t in threads) and node.kills < KILLS:
        time.sleep(rng.uniform(0.3, 2.0))
        if not any(t.is_alive() for t in threads):
            break
        node.kill9()
        node.start()
        wait_for(lambda: echo_ok(port, NODE_AE), 30, "node up after kill -9")
    for t in threads:
        t.join()
    gc.collect()  # collect the SCU sockets pynetdicom leaked, while this test's filter applies
    node.kill9()  # one last crash, then a clean start runs the recovery scan
    node.start()
    wait_for(lambda: echo_ok(port, NODE_AE), 30, "node up after the last crash")
    node.stop()
    assert errors == []
    return senders


def check_survivors(
    tmp_path: Path, instances: list[tuple[Dataset, bytes]], senders: Senders
) -> None:
    root = tmp_path / "storage"
    db = tmp_path / "index.db"
    assert len(senders.acked) == len(instances), (
        "senders gave up before everything was acknowledged"
    )
    engine = create_engine(f"sqlite:///{db}")
    with engine.connect() as conn:
        indexed = {r.sop_instance_uid: r.path for r in conn.execute(select(Instance))}
    engine.dispose()
    missing = [uid for uid in senders.acked if uid not in indexed]
    assert not missing, f"{len(missing)} acknowledged instances not indexed"
    expected = {uid: enc for ds, enc in instances for uid in [str(ds.SOPInstanceUID)]}
    files = [p for p in (root / "instances").rglob("*") if p.is_file()]
    assert len(files) == len(indexed) == len(instances)
    for path in files:  # every visible file is complete and exactly what was sent
        ts, body = dataset_bytes(path)
        assert ts == ExplicitVRLittleEndian
        assert body == expected[path.stem], f"{path.name}: differs from the bytes sent"
    assert list((root / "incoming").iterdir()) == []
