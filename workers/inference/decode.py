"""Pixel data of any transfer syntax in the test data, with a fallback decoder.

pydicom tries its plugins in turn (pylibjpeg + libjpeg/openjpeg/rle, pyjpegls, gdcm). The WG04
12-bit JPEG Extended files defeat all of them (PITFALLS 13); dcmtk's ``dcmdjpeg`` decodes them,
so it is the fallback. When nothing can decode a file the error says which syntax and why.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.errors import Permanent

JPEG_PROCESSES = {
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.70",
}


class DecodeError(Permanent):
    """No decoder here can read this pixel data."""


def read_instance(path: Path) -> Dataset:
    """A stored instance, fully parsed. What the SCP acknowledged passed its structure check,
    but a file edited since (or stored before that check) must fail the job with a readable,
    permanent error, never a crash retried three times."""
    try:
        return dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, RecursionError, KeyError) as exc:
        raise DecodeError(
            f"cannot read stored instance {path.name}: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else ''}"
        ) from exc


def pixel_array(ds: Dataset, path: Path | None = None) -> np.ndarray:
    """Stored pixel values (before rescale), frames first for multi-frame data."""
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as first:
        ts = str(ds.file_meta.get("TransferSyntaxUID", ""))
        if ts in JPEG_PROCESSES and path is not None and shutil.which("dcmdjpeg"):
            return _via_dcmdjpeg(path, ts, first)
        raise DecodeError(
            f"cannot decode pixel data ({ts or 'no transfer syntax'}): "
            f"{str(first).splitlines()[0][:200]}"
        ) from first


def _via_dcmdjpeg(path: Path, ts: str, first: Exception) -> np.ndarray:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "decoded.dcm"
        done = subprocess.run(
            ["dcmdjpeg", str(path), str(out)],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        if done.returncode != 0 or not out.exists():
            raise DecodeError(
                f"cannot decode {ts}: pydicom said {str(first).splitlines()[0][:120]!r}, "
                f"dcmdjpeg said {done.stderr.strip()[:120]!r}"
            ) from first
        return np.asarray(dcmread(out).pixel_array)
