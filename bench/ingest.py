"""Ingest benchmark: dcmtk storescu -> dicom-node vs dcmtk storescp vs Orthanc, in one run.

    python bench/ingest.py [--instances 216] [--repeats 3]

≥ 200 real 512x512 CT instances (the Philips series in the test data, re-identified into new
UIDs, pixel data unchanged) are sent by dcmtk ``storescu`` with TCP_NODELAY=1 (PITFALLS 1) over
1 and 4 concurrent associations. References: ``storescp`` (``--fork`` for 4 associations) and
Orthanc. dicom-node acknowledges only after fsync + rename + index commit; storescp and Orthanc
do not fsync. Prints inst/s, MB/s and ratios (best of ``--repeats``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import DCMTK, free_port, testdata_root, wait_for  # noqa: E402
from tests.peers import (  # noqa: E402
    DCMTK_ENV,
    NodeProcess,
    echo_ok,
    orthanc,
    storescp,
    write_node_config,
)

CT_SERIES = "dcm_qa_ct/In/Philips/S21610/S2010"


def make_study(out: Path, count: int) -> tuple[list[Path], int]:
    src_dir = (testdata_root() or Path("/nonexistent")) / CT_SERIES
    sources = [dcmread(p) for p in sorted(src_dir.iterdir()) if p.name != "DIRFILE"]
    study, series = generate_uid(), generate_uid()
    files, total = [], 0
    for i in range(count):
        ds = copy.deepcopy(sources[i % len(sources)])
        if i % len(sources) == 0:
            series = generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = out / f"{i:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        total += path.stat().st_size
    return files, total


def send(port: int, aet: str, files: list[Path], associations: int) -> float:
    """Seconds for ``associations`` concurrent storescu processes to send ``files``."""
    chunks = [files[i::associations] for i in range(associations)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(
            [DCMTK / "storescu", "-aec", aet, "127.0.0.1", str(port), *map(str, c)],
            env=DCMTK_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for c in chunks
    ]
    for p in procs:
        _out, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"storescu failed: {err.decode()[-500:]}")
    return time.perf_counter() - start


@contextmanager
def dicom_node(workdir: Path, *, fsync: bool = True) -> Iterator[tuple[int, Callable[[], int]]]:
    port = free_port()
    cfg = write_node_config(
        workdir / "node.toml",
        port=port,
        workdir=workdir,
        extra='[logging]\nlevel = "WARNING"\n',
        processes=0,
        fsync=fsync,
    )
    node = NodeProcess(cfg)
    node.start()
    try:
        wait_for(lambda: echo_ok(port, "DICOM_NODE"), 30, "dicom-node up")

        def count() -> int:
            with sqlite3.connect(workdir / "index.db") as conn:
                return int(conn.execute("select count(*) from instances").fetchone()[0])

        yield port, count
    finally:
        node.stop()


def run_one(kind: str, files: list[Path], associations: int, tmp: Path) -> float:
    work = Path(tempfile.mkdtemp(dir=tmp))
    if kind.startswith("dicom-node"):
        with dicom_node(work, fsync=kind == "dicom-node") as (port, count):
            seconds = send(port, "DICOM_NODE", files, associations)
            assert count() == len(files), f"dicom-node indexed {count()} of {len(files)}"
        return seconds
    if kind == "storescp":
        with storescp(work / "out", fork=associations > 1) as port:
            seconds = send(port, "STORESCP", files, associations)
        assert len(list((work / "out").iterdir())) == len(files)
        return seconds
    with orthanc(work / "orthanc") as pacs:
        seconds = send(pacs.dicom_port, pacs.aet, files, associations)
        assert pacs.api("GET", "/statistics")["CountInstances"] == len(files)
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--instances", type=int, default=216)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--kinds", default="dicom-node,dicom-node (no fsync),storescp,orthanc")
    args = ap.parse_args()
    if testdata_root() is None:
        sys.exit("test data not found: set DICOM_NODE_TESTDATA (see README)")
    kinds = args.kinds.split(",")
    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as tmp_name:
        tmp = Path(tmp_name)
        (tmp / "study").mkdir()
        files, total = make_study(tmp / "study", args.instances)
        mb = total / 1e6
        print(
            f"{len(files)} CT instances, {mb:.1f} MB, storescu TCP_NODELAY=1, "
            f"{os.cpu_count()} CPUs, best of {args.repeats}"
        )
        results: dict[tuple[str, int], float] = {}
        for assocs in (1, 4):
            for kind in kinds:
                best = min(run_one(kind, files, assocs, tmp) for _ in range(args.repeats))
                results[kind, assocs] = best
        print()
        print(
            f"{'receiver':<24}{'assocs':>7}{'seconds':>9}{'inst/s':>9}{'MB/s':>8}"
            f"{'vs storescp':>13}{'vs Orthanc':>12}"
        )
        for (kind, assocs), sec in results.items():
            ref = results.get(("storescp", assocs))
            orth = results.get(("orthanc", assocs))
            label = kind if not (kind == "storescp" and assocs > 1) else "storescp --fork"
            vs_ref = f"{ref / sec:.2f}x" if ref else "-"
            vs_orth = f"{orth / sec:.2f}x" if orth else "-"
            print(
                f"{label:<24}{assocs:>7}{sec:>9.2f}{len(files) / sec:>9.0f}{mb / sec:>8.1f}"
                f"{vs_ref:>13}{vs_orth:>12}"
            )


if __name__ == "__main__":
    main()
