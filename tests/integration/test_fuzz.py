"""Fuzz: mutated C-STORE messages, built from real test-data files, against ``dicom-node serve``.

Each message is a real data set (CT, MR explicit and implicit, RLE, JPEG 2000, SR, RT Plan),
re-identified, then mutated one of four ways: bit flips, a changed length field, a truncation,
or two element tags swapped. It is sent as a C-STORE with exactly those bytes. After every
batch the node answers C-ECHO and the RSS of every node process stays within 50 MB of its
baseline; at the end no file has appeared outside the storage root and every acknowledged
instance reads back with pydicom. Opt-in: ``DICOM_NODE_FUZZ_MESSAGES`` messages (CI: 2,000); the
full suite is 10,000 or more.
"""

from __future__ import annotations

import io
import os
import random
import struct
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import _read_file_meta_info
from pydicom.uid import UID, generate_uid
from pynetdicom import AE
from pynetdicom.association import Association

from dicom_node.storage.structure import StructureError, check
from tests.helpers import free_port, wait_for
from tests.peers import NodeProcess, write_node_config
from tests.raw import assert_rss_within, baseline, c_store_raw, echo, json_lines, listening

SEEDS = [
    "pydicom/CT_small.dcm",
    "pydicom/MR_small.dcm",
    "pydicom/MR_small_implicit.dcm",
    "pydicom/MR_small_RLE.dcm",
    "pydicom/JPEG2000.dcm",
    "pydicom/reportsi.dcm",
    "pydicom/test-SR.dcm",
    "pydicom/rtplan.dcm",
]
BATCH = 250


def fuzz_size() -> int:
    return int(os.environ.get("DICOM_NODE_FUZZ_MESSAGES", "0"))


# about 30 messages a second on two cores: the time limit grows with the size asked for
pytestmark = [
    pytest.mark.soak(size="DICOM_NODE_FUZZ_MESSAGES"),
    pytest.mark.timeout(max(300, fuzz_size() // 10 + 120)),
]


class Seed:
    def __init__(self, path: Path) -> None:
        self.ds = dcmread(path)
        self.sop_class = UID(self.ds.SOPClassUID)
        self.syntax = UID(self.ds.file_meta.TransferSyntaxUID)

    def encoded(self, sop_uid: str) -> bytes:
        """The real data set with a new SOP Instance UID, in its own transfer syntax."""
        self.ds.SOPInstanceUID = sop_uid
        buf = io.BytesIO()
        self.ds.save_as(buf, enforce_file_format=True)
        raw = buf.getvalue()
        f = io.BytesIO(raw)
        f.seek(132)
        _read_file_meta_info(f)
        return raw[f.tell() :]


def element_offsets(raw: bytes, implicit: bool) -> list[int]:
    """Offsets of the top-level element headers (a shallow walk, for the length and swap
    mutations)."""
    out, pos = [], 0
    while pos + 8 <= len(raw) and len(out) < 400:
        out.append(pos)
        if implicit:
            length = struct.unpack_from("<L", raw, pos + 4)[0]
            pos += 8
        elif raw[pos + 4 : pos + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OF", b"UC", b"UR"):
            length = struct.unpack_from("<L", raw, pos + 8)[0]
            pos += 12
        else:
            length = struct.unpack_from("<H", raw, pos + 6)[0]
            pos += 8
        if length == 0xFFFFFFFF:
            break
        pos += length
    return out


def mutate(raw: bytes, implicit: bool, rng: random.Random) -> tuple[str, bytes]:
    data = bytearray(raw)
    kind = rng.choice(["bit flips", "length field", "truncation", "swapped tags"])
    offsets = element_offsets(raw, implicit)
    if kind == "bit flips":
        span = min(len(data), 4096) if rng.random() < 0.7 else len(data)
        for _ in range(rng.randint(1, 16)):
            i = rng.randrange(span)
            data[i] ^= 1 << rng.randrange(8)
    elif kind == "length field" and offsets:
        at = rng.choice(offsets)
        wide = implicit or data[at + 4 : at + 6] in (b"OB", b"OW", b"SQ", b"UN", b"UT")
        where, size = (at + (4 if implicit else 8), 4) if wide else (at + 6, 2)
        value = rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF, rng.randrange(1 << (8 * size))])
        data[where : where + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
    elif kind == "swapped tags" and len(offsets) > 2:
        a, b = rng.sample(offsets, 2)
        data[a : a + 4], data[b : b + 4] = data[b : b + 4], data[a : a + 4]
    else:
        kind = "truncation"
        data = data[: rng.randrange(1, len(data))]
    return kind, bytes(data)


def send_raw(assoc: Association, context_id: int, seed: Seed, uid: str, raw: bytes) -> int:
    """One C-STORE with exactly ``raw`` as its data set; the status (-1: no response)."""
    rsp = c_store_raw(assoc, context_id, seed.sop_class, uid, raw)
    return int(rsp.Status) if rsp is not None and rsp.Status is not None else -1


@pytest.fixture
def fuzz_node(tmp_path: Path) -> Iterator[tuple[NodeProcess, int, Path]]:
    port = free_port()
    work = tmp_path / "node"
    work.mkdir()
    config = write_node_config(
        work / "node.toml", port=port, workdir=work, processes=2, fsync=False
    )
    proc = NodeProcess(config, work / "node.log")
    proc.start()
    try:
        wait_for(lambda: listening(port), 30, "node listening")
        wait_for(lambda: echo(port, 2), 10, "node answers C-ECHO")
        yield proc, port, work
    finally:
        proc.stop()


def test_mutated_c_stores_never_hurt_the_node(
    fuzz_node: tuple[NodeProcess, int, Path], testdata: Path, tmp_path: Path
) -> None:
    proc, port, work = fuzz_node
    seeds = [Seed(testdata / s) for s in SEEDS]
    rng = random.Random(20261202)
    total = fuzz_size()
    before_files = {p for p in tmp_path.rglob("*") if "storage" not in p.parts}
    start_rss = baseline(proc)
    acked: dict[str, str] = {}  # SOP Instance UID -> mutation
    outcomes: Counter[str] = Counter()
    ae = AE(ae_title="FUZZER")
    for seed in seeds:
        ae.add_requested_context(seed.sop_class, seed.syntax)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    started = time.monotonic()
    sent = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while sent < total:
            assoc = ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")
            assert assoc.is_established, "the node refused an association during the fuzz run"
            contexts = {
                (c.abstract_syntax, c.transfer_syntax[0]): c.context_id
                for c in assoc.accepted_contexts
            }
            for _ in range(min(BATCH, total - sent)):
                seed = rng.choice(seeds)
                uid = generate_uid()
                kind, raw = mutate(seed.encoded(uid), seed.syntax.is_implicit_VR, rng)
                status = send_raw(assoc, contexts[(seed.sop_class, seed.syntax)], seed, uid, raw)
                sent += 1
                outcomes[f"0x{status:04X}" if status >= 0 else "no response"] += 1
                if status == 0 or 0xB000 <= status <= 0xBFFF:
                    acked[uid] = kind
                if not assoc.is_established:
                    break
            if assoc.is_established:
                assoc.release()
            assert echo(port), f"no C-ECHO after {sent} messages"
            assert_rss_within(start_rss, 50)
    elapsed = time.monotonic() - started
    assert outcomes["no response"] == 0, outcomes

    stored = {p.stem: p for p in (work / "storage" / "instances").rglob("*.dcm")}
    assert set(acked) <= set(stored)
    unreadable = []
    for uid, kind in acked.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds: Dataset = dcmread(stored[uid])
                assert str(ds.SOPInstanceUID) == uid
                for _ in ds.iterall():
                    pass
        except Exception as exc:  # noqa: BLE001 - any failure to read back is the finding
            unreadable.append(f"{uid} ({kind}): {type(exc).__name__}: {exc}")
    assert unreadable == [], "\n".join(unreadable)
    after_files = {p for p in tmp_path.rglob("*") if "storage" not in p.parts}
    assert after_files - before_files <= {
        work / "index.db",
        work / "index.db-wal",
        work / "index.db-shm",
        work / "node.log",
    }
    log_lines = (work / "node.log").read_text().splitlines()
    assert json_lines(log_lines) == len(log_lines)
    print(
        f"\nfuzz: {sent} mutated C-STOREs in {elapsed:.0f} s ({sent / elapsed:.0f}/s), "
        f"{len(acked)} acknowledged and read back; statuses {dict(outcomes)}"
    )


def test_the_structure_check_agrees_with_the_mutations(testdata: Path) -> None:
    """The check refuses every truncation of a real data set short of its end (a cut may land
    on an element boundary, which is then a whole, smaller data set)."""
    seed = Seed(testdata / SEEDS[0])
    raw = seed.encoded(generate_uid())
    offsets = set(element_offsets(raw, implicit=False))
    for cut in range(1, len(raw), 97):
        if cut in offsets:
            continue
        with pytest.raises(StructureError):
            check(raw[:cut], implicit=False, little=True)
