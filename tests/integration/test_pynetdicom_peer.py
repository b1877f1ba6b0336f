"""A pynetdicom SCU on loopback: association control, and every refusal with a named status."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pynetdicom import dsutils
from sqlalchemy import func, select

from dicom_node import statuses
from dicom_node.db.models import AuditEvent, Instance
from tests.helpers import (
    NODE_AE,
    RunningNode,
    fresh_series,
    node_settings,
    scu,
    send_datasets,
    start_node,
)
from tests.peers import dcmtk
from tests.raw import c_store_raw


def send_raw(
    port: int, sop_class: str, sop_instance: str, payload: bytes, ts: str = ExplicitVRLittleEndian
) -> Dataset:
    """A C-STORE whose request UIDs and data set bytes we choose: a bad sender's view."""
    assoc = scu(syntaxes=[ts]).associate("127.0.0.1", port, ae_title=NODE_AE)
    assert assoc.is_established
    try:
        cx = next(c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class)
        rsp = c_store_raw(assoc, cx.context_id, sop_class, sop_instance, payload)
        assert rsp is not None, "no C-STORE response"
        out = Dataset()
        out.Status = rsp.Status
        out.ErrorComment = getattr(rsp, "ErrorComment", None) or ""
        return out
    finally:
        assoc.release()


def send_raw_ts(port: int, ds: Dataset) -> int:
    ae = scu(syntaxes=[str(ds.file_meta.TransferSyntaxUID)])
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    try:
        return int(assoc.send_c_store(ds).Status)
    finally:
        assoc.release()


def encode(ds: Dataset) -> bytes:
    encoded = dsutils.encode(ds, False, True)  # explicit VR little endian
    assert encoded is not None
    return encoded


def test_pynetdicom_scu_store_and_echo(node: RunningNode, ct_slice: Path) -> None:
    ae = scu()
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.is_established
    assert assoc.send_c_echo().Status == statuses.SUCCESS
    ds = dcmread(ct_slice)
    assert assoc.send_c_store(ds).Status == statuses.SUCCESS
    assoc.release()
    study = node.study(ds.StudyInstanceUID)
    assert study is not None and study["instances"] == 1


@pytest.mark.parametrize("name", ["HTJ2KLossless_08_RGB.dcm", "HTJ2K_08_RGB.dcm"])
def test_htj2k_stored_as_received(node: RunningNode, testdata: Path, name: str) -> None:
    """dcmtk 3.6.7 lacks HTJ2K (PITFALLS 11), so pynetdicom sends these.

    The pydicom-data files lack the Type 1 Study/Series Instance UIDs (0xC002 otherwise), so the
    test adds them; the pixel data is sent untouched.
    """
    path = testdata / "pydicom-data" / name
    ds = dcmread(path)
    assert "StudyInstanceUID" not in ds
    rsp = send_raw_ts(node.port, ds)
    assert rsp == statuses.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ts = str(ds.file_meta.TransferSyntaxUID)
    ae = scu(syntaxes=[ts])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    assert assoc.send_c_store(ds).Status == statuses.SUCCESS
    assoc.release()
    with node.engine.connect() as conn:
        row = conn.execute(
            select(Instance).where(Instance.sop_instance_uid == ds.SOPInstanceUID)
        ).one()
    stored = dcmread(node.root / row.path)
    assert row.transfer_syntax_uid == ts == stored.file_meta.TransferSyntaxUID
    assert stored.PixelData == ds.PixelData


def test_unknown_transfer_syntax_is_refused_at_negotiation(node: RunningNode) -> None:
    """pydicom 3.0.2 does not know Deflated Image Frame Compression: the context is rejected."""
    ae = scu(syntaxes=["1.2.840.10008.1.2.8.1"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
    # With no context accepted there is nothing to use the association for: pynetdicom aborts.
    assert not assoc.is_established
    assert {cx.result for cx in assoc.rejected_contexts} <= {0x04}  # transfer syntax unsupported
    assert node.studies() == []


def test_unknown_calling_ae_rejected(tmp_path: Path) -> None:
    node = start_node(node_settings(tmp_path, security={"allowed_calling_aes": ["MODALITY1"]}))
    try:
        assoc = scu("STRANGER").associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x03)
        ok = scu("MODALITY1").associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert ok.is_established
        ok.release()
    finally:
        node.stop()


def test_wrong_called_ae_rejected(node: RunningNode) -> None:
    assoc = scu().associate("127.0.0.1", node.port, ae_title="NOT_THE_NODE")
    assert assoc.is_rejected
    rj = assoc.acceptor.primitive
    assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x07)


def test_host_not_allowed_rejected(tmp_path: Path) -> None:
    node = start_node(node_settings(tmp_path, security={"allowed_hosts": ["10.9.8.0/24"]}))
    try:
        assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x01, 0x01, 0x01)
    finally:
        node.stop()


def test_dataset_uid_must_match_request(node: RunningNode, ct_slice: Path) -> None:
    """PITFALLS 10: a request that names a real image's UID must not overwrite that image."""
    real = dcmread(ct_slice)
    assert send_datasets(node.port, [real]) == [statuses.SUCCESS]
    with node.engine.connect() as conn:
        path = node.root / conn.execute(select(Instance.path)).scalar_one()
    before = path.read_bytes()

    impostor = dcmread(ct_slice)
    impostor.SOPInstanceUID = generate_uid()
    impostor.PixelData = b"\x00" * len(impostor.PixelData)
    rsp = send_raw(node.port, CTImageStorage, real.SOPInstanceUID, encode(impostor))
    assert rsp.Status == statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS
    assert "SOPInstanceUID differs" in rsp.ErrorComment
    assert path.read_bytes() == before


def test_philips_dirfile_refused_without_overwrite(node: RunningNode, ct_dir: Path) -> None:
    """The real trap, with dcmtk: storescu +sd sends DIRFILE as a CT carrying a real UID."""

    images = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")
    done = dcmtk(
        "storescu",
        "-v",
        "-nh",
        "-aec",
        NODE_AE,
        "127.0.0.1",
        node.port,
        *images,
        ct_dir / "DIRFILE",
        check=True,
    )
    assert "Error: DataSetDoesNotMatchSOPClass" in done.stderr
    with node.engine.connect() as conn:
        rows = conn.execute(select(Instance)).all()
    assert len(rows) == len(images)
    for row in rows:  # every stored image is still the image itself
        src = next(
            p
            for p in images
            if dcmread(p, stop_before_pixels=True).SOPInstanceUID == row.sop_instance_uid
        )
        assert dcmread(node.root / row.path).PixelData == dcmread(src).PixelData


def file_payload(path: Path) -> tuple[str, bytes]:
    """(transfer syntax, data set bytes) as a sender forwarding this file would send them."""
    ds = dcmread(path, force=True, stop_before_pixels=True)
    ts = ds.file_meta.get("TransferSyntaxUID") if ds.get("file_meta") else None
    if ts is None:
        implicit, _little = ds.original_encoding
        ts = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
    with path.open("rb") as fh:
        if fh.read(132)[128:] == b"DICM":
            _read_file_meta_info(fh)
        else:
            fh.seek(0)
        return str(ts), fh.read()


@pytest.mark.parametrize(
    ("name", "expected", "comment"),
    [
        # No meta and a stray leading byte: every element after it is misread, and the first
        # misread length runs past the end (the structure check, before any decoding).
        (
            "no_meta.dcm",
            statuses.CANNOT_UNDERSTAND_UNPARSEABLE,
            "(0820,0500) declares 173228800 bytes, 38863 left",
        ),
        ("meta_missing_tsyntax.dcm", statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "no SOPClassUID"),
        ("UN_sequence.dcm", statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "no SOPClassUID"),
        # Tolerant on input (PITFALLS 15): stored as received; decoding is the worker's problem.
        ("badVR.dcm", statuses.SUCCESS, None),
        # Truncated: an element declares more than arrived (issue 14: refused, not stored).
        (
            "rtplan_truncated.dcm",
            statuses.CANNOT_UNDERSTAND_UNPARSEABLE,
            "(300A,00B0) declares 976 bytes, 711 left",
        ),
        ("JPEG2000-embedded-sequence-delimiter.dcm", statuses.SUCCESS, None),
    ],
)
def test_malformed_files_get_a_precise_status(
    node: RunningNode, testdata: Path, name: str, expected: int, comment: str | None
) -> None:
    path = testdata / "pydicom" / name
    ds = dcmread(path, force=True, stop_before_pixels=True)
    sop_class = str(ds.get("SOPClassUID", CTImageStorage))
    sop_instance = str(ds.get("SOPInstanceUID", generate_uid()))
    ts, payload = file_payload(path)
    rsp = send_raw(node.port, sop_class, sop_instance, payload, ts=ts)
    assert rsp.Status == expected, rsp
    if comment:
        assert comment in rsp.ErrorComment
    with node.engine.connect() as conn:
        rows = conn.execute(select(Instance)).all()
    assert len(rows) == (1 if expected == statuses.SUCCESS else 0)
    if rows:
        stored = node.root / rows[0].path
        assert file_payload(stored) == (ts, payload)  # as received, byte for byte


def test_undecodable_dataset(node: RunningNode) -> None:
    garbage = b"\x08\x00\x16\x00UI\xff\x7f" + b"1.2.3"  # a length far past the end
    rsp = send_raw(node.port, CTImageStorage, generate_uid(), garbage)
    assert rsp.Status in {
        statuses.CANNOT_UNDERSTAND_UNPARSEABLE,
        statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS,
    }
    assert rsp.ErrorComment


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("StudyInstanceUID", "../../../../tmp/escape"),
        ("SeriesInstanceUID", "1.2/../../../x"),
        ("StudyInstanceUID", "1.2.3\\..\\x"),
        ("SeriesInstanceUID", "/etc"),
    ],
)
def test_crafted_uid_cannot_escape_storage_root(
    node: RunningNode, ct_slice: Path, tmp_path: Path, field: str, value: str
) -> None:
    ds = dcmread(ct_slice)
    setattr(ds, field, value)
    rsp = send_raw(node.port, CTImageStorage, ds.SOPInstanceUID, encode(ds))
    assert rsp.Status == statuses.CANNOT_UNDERSTAND_INVALID_UID
    assert field.replace("Instance", "").lower()[:5] in rsp.ErrorComment.replace("_", "")
    stored = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".dcm"]
    assert stored == []
    assert not Path("/tmp/escape.dcm").exists()


def test_crafted_request_uid_refused(node: RunningNode, ct_slice: Path) -> None:
    ds = dcmread(ct_slice)
    rsp = send_raw(node.port, CTImageStorage, "../../evil", encode(ds))
    assert rsp.Status == statuses.CANNOT_UNDERSTAND_INVALID_UID


def test_disk_reserve_gives_a700_then_refuses_associations(
    tmpfs: Callable[[int], Path], ct_slice: Path
) -> None:
    """A 24 MiB filesystem with a 16 MiB reserve: about 15 CT slices fit, then 0xA700."""
    root = tmpfs(24)
    node = start_node(node_settings(root, storage={"min_free_mb": 16}))
    try:
        codes = send_datasets(node.port, fresh_series(ct_slice, 40))
        assert codes[0] == statuses.SUCCESS
        assert statuses.OUT_OF_RESOURCES_DISK_RESERVE in codes
        first_refusal = codes.index(statuses.OUT_OF_RESOURCES_DISK_RESERVE)
        assert set(codes[first_refusal:]) == {statuses.OUT_OF_RESOURCES_DISK_RESERVE}
        with node.engine.connect() as conn:
            n = conn.execute(select(func.count()).select_from(Instance)).scalar_one()
        assert n == first_refusal  # every Success is indexed, nothing else is
        assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert assoc.is_rejected
        rj = assoc.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x01)
    finally:
        node.stop()


def test_full_disk_without_reserve_is_a_write_failure(
    tmpfs: Callable[[int], Path], tmp_path: Path, ct_slice: Path
) -> None:
    """No reserve at all and a filesystem that fills: Out of Resources, and no partial file.

    The writer checks the free space against the instance's size first (0xA700); a write that
    still hits ENOSPC (a race with another writer) is 0xA701 with the OS's reason.
    """
    root = tmpfs(4)
    node = start_node(
        node_settings(
            root, storage={"min_free_mb": 0}, database={"url": f"sqlite:///{tmp_path / 'index.db'}"}
        )
    )
    try:
        datasets = fresh_series(ct_slice, 12)
        ae = scu()
        assoc = ae.associate("127.0.0.1", node.port, ae_title=NODE_AE)
        results = [assoc.send_c_store(ds) for ds in datasets]
        assoc.release()
        codes = [int(r.Status) for r in results]
        refused = [r for r in results if r.Status != statuses.SUCCESS]
        assert refused, codes
        assert codes[: len(codes) - len(refused)] == [statuses.SUCCESS] * (
            len(codes) - len(refused)
        )
        for r in refused:
            assert r.Status in {
                statuses.OUT_OF_RESOURCES_DISK_RESERVE,
                statuses.OUT_OF_RESOURCES_WRITE_FAILED,
            }
            assert r.ErrorComment in {
                "disk reserve reached",
                "write failed: No space left on device",
            }
        stored = sorted((root / "storage" / "instances").rglob("*.dcm"))
        assert len(stored) == codes.count(statuses.SUCCESS)
        for path in stored:  # every visible file is complete
            assert dcmread(path).PixelData == datasets[0].PixelData
        assert list((root / "storage" / "incoming").iterdir()) == []
    finally:
        node.stop()


def test_duplicate_recorded_in_audit(node: RunningNode, ct_slice: Path) -> None:
    ds = dcmread(ct_slice)
    assert send_datasets(node.port, [ds, ds]) == [statuses.SUCCESS, statuses.SUCCESS]
    with node.engine.connect() as conn:
        events = (
            conn.execute(
                select(AuditEvent.event_type).where(AuditEvent.entity_id == ds.SOPInstanceUID)
            )
            .scalars()
            .all()
        )
    assert events == ["instance.duplicate"]


def test_overwrite_policy_replaces_and_records(tmp_path: Path, ct_slice: Path) -> None:
    node = start_node(node_settings(tmp_path, storage={"duplicate_policy": "overwrite"}))
    try:
        ds = dcmread(ct_slice)
        send_datasets(node.port, [ds])
        changed = dcmread(ct_slice)
        changed.SeriesDescription = "second version"
        assert send_datasets(node.port, [changed]) == [statuses.SUCCESS]
        with node.engine.connect() as conn:
            row = conn.execute(select(Instance)).one()
            events = conn.execute(select(AuditEvent.event_type)).scalars().all()
        assert dcmread(node.root / row.path).SeriesDescription == "second version"
        assert row.duplicates_received == 1
        assert "instance.overwritten" in events
    finally:
        node.stop()


def test_maximum_associations_enforced(tmp_path: Path) -> None:
    node = start_node(node_settings(tmp_path, node={"max_associations": 2}))
    held = []
    try:
        for _ in range(2):
            assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
            assert assoc.is_established
            held.append(assoc)
        third = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
        assert third.is_rejected
        rj = third.acceptor.primitive
        assert (rj.result, rj.result_source, rj.diagnostic) == (0x02, 0x03, 0x02)  # local limit
    finally:
        for assoc in held:
            assoc.release()
        node.stop()


def test_accepted_sockets_have_tcp_nodelay(tmp_path: Path) -> None:
    """PITFALLS 1: pynetdicom does not set TCP_NODELAY; the node's server does."""
    import socket  # noqa: PLC0415

    from dicom_node.receive.scp import build_scp  # noqa: PLC0415

    settings = node_settings(tmp_path)
    scp = build_scp(settings)
    try:
        with socket.create_connection(("127.0.0.1", settings.node.port)) as client:
            accepted, _addr = scp.server.get_request()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
            del client
    finally:
        scp.server.server_close()
        scp.engine.dispose()
