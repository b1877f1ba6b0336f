"""The hot path's structural check of result objects (``workers.results.check``): real SEG and
SR objects from dcmqi and highdicom pass it, and each way an object can be incomplete fails it
with a message that says what a reader would miss."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from workers.results.check import check, read_back
from workers.results.errors import ResultError

REAL = [
    ("dcmqi/data/segmentations/liver.dcm", "seg"),
    ("dcmqi/data/sr-example/seg.dcm", "seg"),
    ("dcmqi/data/sr-example/sr.dcm", "sr"),
    ("highdicom/data/test_files/seg_image_ct_binary.dcm", "seg"),
    ("highdicom/data/test_files/seg_image_ct_binary_fractional.dcm", "seg"),
    ("highdicom/data/test_files/sr_document.dcm", "sr"),
]


@pytest.mark.parametrize(("name", "kind"), REAL, ids=[n.split("/")[-1] for n, _ in REAL])
def test_real_objects_pass_and_highdicom_agrees(testdata: Path, name: str, kind: str) -> None:
    path = testdata / name
    assert check(path, kind).SOPInstanceUID == read_back(path, kind).SOPInstanceUID


def _truncate_pixels(ds: Dataset) -> None:
    ds.PixelData = ds.PixelData[:-2]


def _lose_a_frame_group(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[-1]


def _name_a_segment_that_is_not_there(ds: Dataset) -> None:
    item = ds.PerFrameFunctionalGroupsSequence[0].SegmentIdentificationSequence[0]
    item.ReferencedSegmentNumber = 9


def _unplace_a_frame(ds: Dataset) -> None:
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence


def _renumber_segments(ds: Dataset) -> None:
    ds.SegmentSequence[0].SegmentNumber = 5


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (_truncate_pixels, "PixelData has 94 bytes, 96 for 3 frames"),  # 16 x 16 x 3 bits
        (_lose_a_frame_group, "2 per-frame functional groups for 3 frames"),
        (_name_a_segment_that_is_not_there, "frame 1 names segment 9, not in the SEG"),
        (_unplace_a_frame, "no PlanePositionSequence for frame 2"),
        (_renumber_segments, "segments are numbered [2, 5], not 1..n"),
    ],
    ids=["pixels short", "frame group lost", "unknown segment", "frame unplaced", "numbering"],
)
def test_an_incomplete_seg_is_refused_with_what_is_missing(
    testdata: Path, tmp_path: Path, corrupt: Callable[[Dataset], None], message: str
) -> None:
    ds = dcmread(testdata / "highdicom/data/test_files/seg_image_ct_binary.dcm")
    if corrupt is _renumber_segments and len(ds.SegmentSequence) < 2:
        second = Dataset()
        second.update(ds.SegmentSequence[0])
        second.SegmentNumber = 2
        ds.SegmentSequence.append(second)
    corrupt(ds)
    path = tmp_path / "seg.dcm"
    ds.save_as(path)
    with pytest.raises(ResultError) as caught:
        check(path, "seg")
    assert str(caught.value) == f"seg seg.dcm is incomplete: {message}"


def _nested(ds: Dataset) -> Dataset:
    """The first content item below the root's own children."""
    for item in ds.ContentSequence:
        if "ContentSequence" in item:
            return item.ContentSequence[0]
    raise AssertionError("no nested content")


def test_an_incomplete_sr_is_refused_down_to_its_items(testdata: Path, tmp_path: Path) -> None:
    source = testdata / "dcmqi/data/sr-example/sr.dcm"
    path = tmp_path / "sr.dcm"

    def refused(change: Callable[[Dataset], None]) -> str:
        ds = dcmread(source)
        change(ds)
        ds.save_as(path)
        with pytest.raises(ResultError) as caught:
            check(path, "sr")
        return str(caught.value)

    assert refused(lambda ds: delattr(ds, "ContentSequence")) == (
        "sr sr.dcm is incomplete: no ContentSequence"
    )
    assert "is not a sr" in refused(
        lambda ds: setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.2")
    )

    def drop_value_type(ds: Dataset) -> None:
        del _nested(ds).ValueType

    assert "no ValueType in content item" in refused(drop_value_type)

    def drop_a_value(ds: Dataset) -> None:
        nums = []

        def walk(items: list[Dataset]) -> None:
            for i in items:
                if i.ValueType == "NUM":
                    nums.append(i)
                walk(i.get("ContentSequence", []))

        walk(ds.ContentSequence)
        del nums[0].MeasuredValueSequence

    assert "no MeasuredValueSequence in content item" in refused(drop_a_value)


def test_a_file_that_is_not_dicom_does_not_read_back(tmp_path: Path) -> None:
    path = tmp_path / "x.dcm"
    path.write_bytes(b"not dicom")
    with pytest.raises(ResultError, match=r"seg x\.dcm does not read back"):
        check(path, "seg")
