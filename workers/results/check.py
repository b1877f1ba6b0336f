"""The hot path's check of a written result object: what a reader needs of it, from the file
as written, without building highdicom's objects (issue 18: the full read-back cost more than
the build). The tests read every object back with highdicom as well (``read_back``).

- every object: its SOP Class is the kind's;
- SEG and Parametric Map: one functional group per frame, each frame placed (Plane Position)
  and, for a SEG, naming a segment of the Segment Sequence (numbered 1..n); the pixel data as
  long as rows x columns x frames x bits says;
- SR and KOS: a CONTAINER root with its concept name and content, and every content item with
  its relationship, value type and the attributes that value type needs, all the way down.
"""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from workers.results.errors import ResultError

CLASSES = {
    "seg": {"1.2.840.10008.5.1.4.1.1.66.4"},
    "pm": {"1.2.840.10008.5.1.4.1.1.30"},
    "sr": {
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    },
    "kos": {"1.2.840.10008.5.1.4.1.1.88.59"},
}
# What each content item's value type needs (PS3.3 C.17.3 and C.18).
VALUE_ATTRIBUTES = {
    "CONTAINER": ("ContinuityOfContent",),
    "CODE": ("ConceptCodeSequence",),
    "NUM": ("MeasuredValueSequence",),
    "TEXT": ("TextValue",),
    "UIDREF": ("UID",),
    "DATE": ("Date",),
    "TIME": ("Time",),
    "DATETIME": ("DateTime",),
    "PNAME": ("PersonName",),
    "IMAGE": ("ReferencedSOPSequence",),
    "COMPOSITE": ("ReferencedSOPSequence",),
    "WAVEFORM": ("ReferencedSOPSequence",),
    "SCOORD": ("GraphicData", "GraphicType"),
    "SCOORD3D": ("GraphicData", "GraphicType", "ReferencedFrameOfReferenceUID"),
    "TCOORD": ("TemporalRangeType",),
}
PIXEL_ELEMENTS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def check(path: Path, kind: str) -> Dataset:
    """The object at ``path``, read as written; ``ResultError`` naming what a reader would miss."""
    try:
        ds = dcmread(path)
    except (InvalidDicomError, OSError, ValueError) as exc:
        raise ResultError(f"{kind} {path.name} does not read back: {exc}") from None
    try:
        classes = CLASSES.get(kind)
        if classes is not None and str(ds.SOPClassUID) not in classes:
            raise _MissingError(f"SOP Class {ds.SOPClassUID} is not a {kind}")
        if kind in ("seg", "pm"):
            _frames(ds, segments=kind == "seg")
        elif kind in ("sr", "kos"):
            _document(ds)
            if kind == "kos":
                _need(ds, "CurrentRequestedProcedureEvidenceSequence")
    except _MissingError as exc:
        raise ResultError(f"{kind} {path.name} is incomplete: {exc}") from None
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as exc:
        raise ResultError(f"{kind} {path.name} is incomplete: {exc!r}") from None
    return ds


def read_back(path: Path, kind: str) -> Dataset:
    """The object read back with highdicom as its class (what the tests do to every object)."""
    if kind == "seg":
        return hd.seg.segread(path)
    if kind == "sr":
        return hd.sr.srread(path)
    if kind == "kos":
        return hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(path))
    return dcmread(path)


class _MissingError(Exception):
    pass


def _need(ds: Dataset, *keywords: str, where: str = "") -> None:
    for keyword in keywords:
        if keyword not in ds:
            raise _MissingError(f"no {keyword}{' in ' + where if where else ''}")


def _frames(ds: Dataset, *, segments: bool) -> None:
    _need(ds, "NumberOfFrames", "Rows", "Columns", "BitsAllocated")
    _need(ds, "SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence")
    frames = int(ds.NumberOfFrames)
    per_frame = ds.PerFrameFunctionalGroupsSequence
    if len(per_frame) != frames:
        raise _MissingError(f"{len(per_frame)} per-frame functional groups for {frames} frames")
    shared = ds.SharedFunctionalGroupsSequence[0]
    numbers: set[int] = set()
    if segments:
        _need(ds, "SegmentSequence")
        numbers = {int(s.SegmentNumber) for s in ds.SegmentSequence}
        if sorted(numbers) != list(range(1, len(ds.SegmentSequence) + 1)):
            raise _MissingError(f"segments are numbered {sorted(numbers)}, not 1..n")
    for i, item in enumerate(per_frame, 1):
        where = f"frame {i}"
        if "PlanePositionSequence" not in item and "PlanePositionSequence" not in shared:
            raise _MissingError(f"no PlanePositionSequence for {where}")
        if segments:
            group = item if "SegmentIdentificationSequence" in item else shared
            _need(group, "SegmentIdentificationSequence", where=where)
            number = int(group.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            if number not in numbers:
                raise _MissingError(f"{where} names segment {number}, not in the SEG")
    if not ds.file_meta.TransferSyntaxUID.is_compressed:
        _pixels_cover(ds, frames)


def _pixels_cover(ds: Dataset, frames: int) -> None:
    element = next((k for k in PIXEL_ELEMENTS if k in ds), None)
    if element is None:
        raise _MissingError("no pixel data")
    bits = int(ds.Rows) * int(ds.Columns) * frames * int(ds.BitsAllocated)
    wanted = -(-bits // 8)
    wanted += wanted % 2  # padded to an even length
    got = len(ds[element].value)
    if got != wanted:
        raise _MissingError(f"{element} has {got} bytes, {wanted} for {frames} frames")


def _document(ds: Dataset) -> None:
    _need(ds, "ValueType", "ConceptNameCodeSequence", "ContentSequence")
    if ds.ValueType != "CONTAINER":
        raise _MissingError(f"the root is {ds.ValueType}, not a CONTAINER")
    _items(ds.ContentSequence, "content")


def _items(items: list[Dataset], where: str) -> None:
    for i, item in enumerate(items, 1):
        here = f"{where} item {i}"
        _need(item, "RelationshipType", "ValueType", where=here)
        value_type = str(item.ValueType)
        if value_type not in VALUE_ATTRIBUTES:
            raise _MissingError(f"{here} has value type {value_type!r}")
        _need(item, *VALUE_ATTRIBUTES[value_type], where=here)
        if "ContentSequence" in item:
            _items(item.ContentSequence, here)
