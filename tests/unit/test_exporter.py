"""The exporter's pass (``dicom_node.export.exporter.DestinationSender``) against a real
pynetdicom Storage SCP on loopback, in process, whose answer each test chooses: delivered rows
settle the job, a refusal waits, a missing file fails its row alone, a destination that does
not answer opens the circuit, and a C-ECHO probe closes it again. ``dicom-node echo``'s SCU
(``dicom_node.receive.echo``) against the same peer."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import CTImageStorage, MRImageStorage, Verification
from sqlalchemy import Engine, insert, select, update

from dicom_node.db.models import DestinationCircuit, Export, utcnow
from dicom_node.export import outbox
from dicom_node.export.exporter import DestinationSender
from dicom_node.export.scu import LOST, echo, store
from dicom_node.receive.echo import c_echo
from dicom_node.results import ObjectKind, ResultObject
from dicom_node.settings import DestinationSettings, Settings
from tests.rows import add_job, job, sqlite_index


@dataclass
class Peer:
    """A Storage SCP answering ``status`` to every C-STORE, keeping what it was sent."""

    port: int
    status: int = 0x0000
    received: list[str] = field(default_factory=list)


@pytest.fixture
def peer() -> Iterator[Peer]:
    ae = AE(ae_title="PACS")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    ae.require_called_aet = True
    found = Peer(0)

    def on_store(event: Any) -> int:
        found.received.append(str(event.request.AffectedSOPInstanceUID))
        return found.status

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    found.port = server.server_address[1]
    yield found
    server.shutdown()


def destination(port: int, **values: Any) -> DestinationSettings:
    values = {"acse_timeout_s": 5, "dimse_timeout_s": 10, **values}
    return DestinationSettings(
        name="pacs", ae_title="PACS", host="127.0.0.1", port=port, max_attempts=3,
        circuit_failures=1, circuit_probe_s=30, **values,
    )  # fmt: skip


def site(
    tmp_path: Path, ct_dir: Path, dest: DestinationSettings
) -> tuple[Engine, DestinationSender, list[str]]:
    """A RESULTS_READY job whose two 'result objects' are real CT slices."""
    engine = sqlite_index(tmp_path)
    add_job(engine, state="RESULTS_READY", attempts=1)
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:2]
    objects = []
    for kind, path in zip((ObjectKind.SEG, ObjectKind.SR), files, strict=True):
        ds = dcmread(path, stop_before_pixels=True)
        objects.append(
            ResultObject(kind, str(path), str(ds.SOPClassUID), str(ds.SOPInstanceUID), "1.2")
        )
    with engine.begin() as conn:
        outbox.create_exports(
            conn, job_id="job-1", study_uid="1.2.3", destinations=[dest],
            objects={"default": tuple(objects)}, at=utcnow(),
        )  # fmt: skip
    settings = Settings(destinations=[dest])  # type: ignore[arg-type]
    return engine, DestinationSender(engine, settings, dest), [o.sop_instance_uid for o in objects]


def states(engine: Engine) -> dict[str, tuple[str, int | None]]:
    with engine.connect() as conn:
        rows = conn.execute(select(Export.kind, Export.state, Export.last_status)).all()
    return {str(kind): (str(state), status) for kind, state, status in rows}


def test_delivered_objects_settle_the_job(tmp_path: Path, ct_dir: Path, peer: Peer) -> None:
    engine, sender, uids = site(tmp_path, ct_dir, destination(peer.port))
    assert sender.pass_once() is True
    assert sorted(peer.received) == sorted(uids)
    assert states(engine) == {"seg": ("DELIVERED", 0), "sr": ("DELIVERED", 0)}
    assert job(engine, "job-1").state == "DONE"
    assert sender.pass_once() is False  # nothing left


def test_a_refusal_waits_for_a_retry(tmp_path: Path, ct_dir: Path, peer: Peer) -> None:
    peer.status = 0xA700
    engine, sender, _ = site(tmp_path, ct_dir, destination(peer.port))
    sender.pass_once()
    assert states(engine) == {"seg": ("RETRY_WAIT", 0xA700), "sr": ("RETRY_WAIT", 0xA700)}
    assert job(engine, "job-1").state == "EXPORTING"


def test_a_missing_file_fails_its_row_and_the_rest_is_sent(
    tmp_path: Path, ct_dir: Path, peer: Peer
) -> None:
    engine, sender, uids = site(tmp_path, ct_dir, destination(peer.port))
    with engine.begin() as conn:
        conn.execute(
            update(Export).where(Export.kind == "sr").values(path=str(tmp_path / "gone.dcm"))
        )
    sender.pass_once()
    assert peer.received == [uids[0]]
    found = states(engine)
    assert found["seg"] == ("DELIVERED", 0) and found["sr"][0] == "FAILED"
    with engine.connect() as conn:
        error = conn.execute(select(Export.last_error).where(Export.kind == "sr")).scalar_one()
    assert error == f"result file missing: {tmp_path / 'gone.dcm'}"


# pynetdicom drops the socket of a refused connection unclosed (closed when it is collected)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_silent_destination_opens_the_circuit_and_a_probe_closes_it(
    tmp_path: Path, ct_dir: Path, peer: Peer
) -> None:
    closed = destination(1)  # nothing listens on port 1
    engine, sender, _ = site(tmp_path, ct_dir, closed)
    sender.pass_once()
    assert {s for s, _ in states(engine).values()} == {"RETRY_WAIT"}
    assert outbox.circuit(engine, "pacs").state == "OPEN"
    assert sender.pass_once() is False  # the probe is not due yet: nothing is tried
    with engine.begin() as conn:
        conn.execute(update(DestinationCircuit).values(probe_at=utcnow()))
    sender.dest = destination(peer.port)  # the PACS is back (at its real address)
    sender.pass_once()
    assert outbox.circuit(engine, "pacs").state == "CLOSED"
    assert peer.received == []  # the probe was a C-ECHO, nothing was sent


def test_echo_says_success_rejection_or_no_answer(peer: Peer) -> None:
    ok = c_echo("127.0.0.1", peer.port, "PACS", calling_ae="NODE")
    assert ok.ok and ok.message == f"C-ECHO PACS@127.0.0.1:{peer.port}: Success"
    wrong = c_echo("127.0.0.1", peer.port, "NOT_PACS", calling_ae="NODE")
    assert not wrong.ok and wrong.message.startswith("association rejected: ")
    assert "Called AE title not recognised" in wrong.message


@pytest.fixture
def picky() -> Iterator[Peer]:
    """A PACS that accepts MR Image Storage only, and aborts after its first C-STORE."""
    ae = AE(ae_title="PACS")
    ae.add_supported_context(MRImageStorage)
    ae.add_supported_context(CTImageStorage)
    found = Peer(0)

    def on_store(event: Any) -> int:
        found.received.append(str(event.request.AffectedSOPInstanceUID))
        if len(found.received) == 1:
            event.assoc.abort()
        return 0

    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    found.port = server.server_address[1]
    yield found
    server.shutdown()


def test_a_sop_class_the_pacs_does_not_take_is_refused_for_good(
    picky: Peer, ct_slice: Path, tmp_path: Path
) -> None:
    seg = tmp_path / "seg.dcm"
    ds = dcmread(ct_slice)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.save_as(seg)
    (outcome,) = store(destination(picky.port), "NODE", [(seg, str(ds.SOPClassUID))])
    assert (outcome.delivered, outcome.transient) == (False, False)
    assert outcome.message == (
        f"not accepted by the PACS: PACS@127.0.0.1:{picky.port} rejects every SOP class "
        "offered: Segmentation Storage"
    )
    assert picky.received == []


def test_a_pacs_that_takes_no_seg_fails_the_row_and_keeps_its_circuit_closed(
    picky: Peer, tmp_path: Path, ct_dir: Path
) -> None:
    engine, sender, _ = site(tmp_path, ct_dir, destination(picky.port))
    seg = tmp_path / "seg.dcm"
    ds = dcmread(next(p for p in ct_dir.iterdir() if p.name != "DIRFILE"))
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.save_as(seg)
    with engine.begin() as conn:
        conn.execute(
            update(Export).values(path=str(seg), sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4")
        )
    sender.pass_once()
    assert {s for s, _ in states(engine).values()} == {"FAILED"}  # said once, not retried forever
    assert outbox.circuit(engine, "pacs").state == "CLOSED"  # the PACS answered: it is up


def test_a_pacs_that_aborts_midway_loses_the_rest_unsent(picky: Peer, ct_dir: Path) -> None:
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:3]
    sop = str(dcmread(files[0], stop_before_pixels=True).SOPClassUID)
    outcomes = store(destination(picky.port, dimse_timeout_s=2), "NODE", [(p, sop) for p in files])
    assert len(picky.received) == 1
    assert all(o.transient and not o.delivered for o in outcomes)  # each worth a retry
    assert outcomes[0].message == "no C-STORE response (timeout or abort)"
    # the next may have left before the abort arrived (unanswered); the last never left, and
    # an object never put on the wire does not use one of its attempts
    assert outcomes[-1] == LOST and not outcomes[-1].sent


# pynetdicom drops the socket of a refused connection unclosed (closed when it is collected)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_the_destination_echo_says_why_it_failed(peer: Peer, picky: Peer) -> None:
    assert echo(destination(peer.port), "NODE") == ""
    assert echo(destination(picky.port), "NODE") == (
        f"PACS@127.0.0.1:{picky.port} rejects every SOP class offered: Verification SOP Class"
    )  # a PACS without C-ECHO: said, not raised
    assert echo(destination(picky.port), "NODE", probe=True) == ""  # it answered: it is up
    closed = echo(destination(1), "NODE")
    assert closed.startswith("association with PACS@127.0.0.1:1 aborted or no answer")


def test_a_pacs_without_c_echo_closes_its_circuit_when_it_answers(
    tmp_path: Path, ct_dir: Path, picky: Peer
) -> None:
    engine, sender, _ = site(tmp_path, ct_dir, destination(picky.port))
    with engine.begin() as conn:  # opened by an earlier outage, its probe due now
        conn.execute(
            insert(DestinationCircuit),
            {"destination": "pacs", "state": "OPEN", "failures": 1, "probe_at": utcnow()},
        )
    assert sender.pass_once() is False  # the probe only: nothing is sent while OPEN
    assert outbox.circuit(engine, "pacs").state == "CLOSED"
    assert sender.pass_once() is True  # and the next pass sends
    assert len(picky.received) == 1  # the picky PACS takes the first CT slice, then aborts
