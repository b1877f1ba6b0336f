"""dcmtk peers over loopback: echoscu, and storescu of every DICOM file in the test data."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID
from sqlalchemy import select

from dicom_node.db.models import Instance
from tests.helpers import NODE_AE, TRAILING_PADDING, RunningNode, dataset_bytes
from tests.peers import dcmtk, storescp

# storescu only proposes what it is told to (PITFALLS 11); one flag per transfer syntax.
STORESCU_FLAG = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.57": "-xs",  # storescu's -xs proposes both lossless JPEG syntaxes
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


def storable_files(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """Every storable Part 10 file (own SOP UIDs, a storage SOP class) grouped by syntax."""
    groups: dict[str, list[tuple[Path, str]]] = defaultdict(list)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            ds = dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, AttributeError):
            continue
        ts = ds.file_meta.get("TransferSyntaxUID") if ds.get("file_meta") is not None else None
        sop_class = ds.get("SOPClassUID")
        if not (ts and sop_class and ds.get("SOPInstanceUID") and ds.get("StudyInstanceUID")):
            continue  # malformed or a directory: covered by test_malformed.py
        if UID(str(sop_class)).keyword == "MediaStorageDirectoryStorage":
            continue
        groups[str(ts)].append((path, str(ds.SOPInstanceUID)))
    return groups


def storescu(port: int, flag: str, files: list[Path], called: str = NODE_AE) -> dict[str, str]:
    """Send with dcmtk storescu; {file: response} for every file it sent (it skips unreadable ones).

    ``-nh`` exits 0 even when a store failed (PITFALLS 11), so the verbose log is the evidence.
    """
    done = dcmtk(
        "storescu", "-v", "-aec", called, "-R", "-nh", flag, "127.0.0.1", port, *files, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    responses: dict[str, str] = {}
    current = None
    for line in done.stderr.splitlines():
        if line.startswith("I: Sending file: "):
            current = line.removeprefix("I: Sending file: ").strip()
        elif line.startswith("I: Received Store Response (") and current is not None:
            responses[current] = line.split("(", 1)[1].rstrip(")")
            current = None
    return responses


def test_echoscu(node: RunningNode) -> None:
    done = dcmtk("echoscu", "-aec", NODE_AE, "127.0.0.1", node.port, timeout=30)
    assert done.returncode == 0, done.stderr


@pytest.fixture
def reference_storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp in bit-preserving mode (+B): writes each data set exactly as received."""
    out = tmp_path / "storescp"
    with storescp(out, aet="REF", bit_preserving=True) as port:
        yield port, out


def _content(path: Path) -> Dataset:
    ds = dcmread(path)
    ds.pop(TRAILING_PADDING, None)  # PS3.10 7.2: senders may drop it (storescu does)
    pixels = ds.get("PixelData")
    if pixels is not None and len(pixels) % 2:
        ds.PixelData = pixels + b"\x00"  # PS3.5 7.1.1: values have even length; dcmtk pads
    return ds


def test_storescu_every_folder_stored_as_received(
    node: RunningNode, testdata: Path, reference_storescp: tuple[int, Path]
) -> None:
    """Every valid instance: Success, indexed, same transfer syntax, data set bytes unchanged.

    storescu re-encodes some data sets on the way (e.g. undefined-length sequences), so the
    oracle for "as received" is dcmtk storescp +B fed the same files; the source file is the
    oracle for the content (every element, the pixel data bytes).
    """
    ref_port, ref_dir = reference_storescp
    groups = storable_files(testdata)
    sent_first: dict[str, Path] = {}
    unsent: list[str] = []  # transfer syntaxes storescu cannot propose
    for ts, files in sorted(groups.items()):
        flag = STORESCU_FLAG.get(ts)
        if flag is None:
            unsent.append(ts)  # dcmtk 3.6.7 knows neither HTJ2K nor Deflated Image Frame
            continue
        responses = storescu(node.port, flag, [p for p, _ in files])
        failures = {k: v for k, v in responses.items() if v != "Success"}
        assert not failures, failures
        firsts = []
        for path, uid in files:
            if str(path) in responses and uid not in sent_first:
                sent_first[uid] = path  # derived series reuse UIDs: keep-first (PITFALLS 17)
                firsts.append(path)
        ref = storescu(ref_port, flag, firsts, called="REF")
        assert set(ref.values()) == {"Success"}, ref
    # those go by pynetdicom in test_pynetdicom_peer.py
    assert set(unsent) <= {
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.8.1",
    }, unsent
    assert len(sent_first) > 200

    with node.engine.connect() as conn:
        rows = {r.sop_instance_uid: r for r in conn.execute(select(Instance))}
    missing = sorted(set(sent_first) - set(rows))
    assert not missing, f"{len(missing)} acknowledged instances not indexed: {missing[:3]}"
    reference = {
        str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in ref_dir.iterdir()
    }
    for uid, source in sent_first.items():
        stored = node.root / rows[uid].path
        got_ts, got_bytes = dataset_bytes(stored)
        ref_ts, ref_bytes = dataset_bytes(reference[uid])
        assert got_ts == ref_ts == rows[uid].transfer_syntax_uid, source
        assert got_ts == str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)
        assert got_bytes == ref_bytes, f"{source}: stored data set differs from the one received"
        assert _content(stored) == _content(source), f"{source}: an element changed on the way"


def test_storescu_resend_is_idempotent(node: RunningNode, ct_dir: Path) -> None:
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:5]
    for _ in range(2):
        assert set(storescu(node.port, "-xe", files).values()) == {"Success"}
    with node.engine.connect() as conn:
        counts = [r.duplicates_received for r in conn.execute(select(Instance))]
    assert counts == [1] * 5
