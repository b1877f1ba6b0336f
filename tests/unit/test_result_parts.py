"""The parts the results builder is made of (``workers.results``): source repairs, provenance
(UIDs, times, descriptions), key-frame choice and outlines, the mask's frame order, and the
object files' round trip. The objects themselves are checked end to end elsewhere."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.settings import BUILTIN_MODELS
from workers.inference.manifest import Manifest, load_manifest
from workers.results.build import load_mask, write_object
from workers.results.keyimages import key_frames, outline
from workers.results.provenance import (
    derived_uid,
    model_uid,
    series_description,
    stamp,
)
from workers.results.seg import Mask, ResultError, frame_order
from workers.results.sources import repair


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    found, _ = load_manifest(BUILTIN_MODELS, "ct-tissue")
    return found


def mask(labels: np.ndarray, uids: tuple[str, ...] | None = None) -> Mask:
    n = labels.shape[0]
    return Mask(
        labels=labels,
        sop_instance_uids=uids or tuple(f"1.2.3.{k}" for k in range(n)),
        frame_numbers=(0,) * n,
        probabilities=None,
        confidence=None,
    )


# --- source repairs -------------------------------------------------------------------------


def test_a_clean_source_needs_no_repair() -> None:
    ds = Dataset()
    ds.StudyDescription = "CT HEAD"
    ds.SliceThickness = "2.5"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    assert repair(ds) == []


def test_a_value_too_long_for_its_vr_is_cut_with_a_note() -> None:
    ds = Dataset()
    ds.StudyDescription = "x" * 80  # LO: 64
    assert repair(ds) == ["StudyDescription: longer than VR LO allows: cut to its maximum length"]
    assert ds.StudyDescription == "x" * 64


def test_an_invalid_value_is_dropped_with_a_note() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00080020, "DA", "2015-02-06"))  # StudyDate as ISO, not DICOM DA
    assert repair(ds) == ["StudyDate: not a valid DA value: value dropped"]
    assert ds.StudyDate in (None, "")


def test_a_wrong_vr_is_reread_as_the_dictionary_vr() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00181030, "SH", "HEAD ROUTINE"))  # ProtocolName is LO
    assert repair(ds) == ["ProtocolName: encoded as VR SH, re-read as LO"]
    assert ds["ProtocolName"].VR == "LO" and ds.ProtocolName == "HEAD ROUTINE"


def test_private_and_binary_elements_are_left_alone() -> None:
    ds = Dataset()
    ds.add(DataElement(0x00291010, "OB", b"\x00\x01"))
    ds.Rows = 512
    assert repair(ds) == []


# --- provenance -----------------------------------------------------------------------------


def test_derived_uids_depend_on_the_inputs_not_their_order(manifest: Manifest) -> None:
    a, b = generate_uid(), generate_uid()
    first = derived_uid("seg", manifest, [a, b])
    assert first == derived_uid("seg", manifest, [b, a])
    assert first.startswith("2.25.") and len(first) <= 64 and first.is_valid
    assert first != derived_uid("sr", manifest, [a, b])
    assert first != derived_uid("seg", manifest, [a])
    assert first != derived_uid("seg", manifest, [a, b], "omit-empty")


def test_the_model_uid_is_one_per_model_version(manifest: Manifest) -> None:
    newer = manifest.model_copy(update={"version": manifest.version + ".1"})
    assert model_uid(manifest) == model_uid(manifest)
    assert model_uid(manifest) != model_uid(newer)


def test_times_carry_their_offset_from_utc() -> None:
    ds = Dataset()
    at = datetime(2026, 12, 3, 10, 0, 0, 123456, tzinfo=UTC)
    stamp(ds, at)
    local = at.astimezone()
    assert ds.ContentDate == ds.InstanceCreationDate == local.strftime("%Y%m%d")
    assert ds.ContentTime == local.strftime("%H%M%S.%f")
    assert ds.TimezoneOffsetFromUTC == local.strftime("%z")


def test_series_descriptions_say_ai_and_fit_lo(manifest: Manifest) -> None:
    text = series_description("SEG", manifest)
    assert text.startswith(f"AI SEG {manifest.name} {manifest.version}")
    assert ("NOT FOR DIAGNOSTIC USE" in text) == manifest.not_for_diagnostic_use
    long = manifest.model_copy(update={"name": "m" * 70})
    assert len(series_description("SEG", long)) == 64


# --- key images -----------------------------------------------------------------------------


def test_key_frames_are_the_largest_areas_first_and_never_empty() -> None:
    labels = np.zeros((5, 4, 4), dtype=np.uint8)
    labels[1, :2] = 1  # 8 pixels
    labels[3] = 2  # 16
    labels[4, 0, 0] = 1  # 1
    assert key_frames(mask(labels), 2) == [3, 1]
    assert key_frames(mask(labels), 10) == [3, 1, 4]
    assert key_frames(mask(np.zeros((3, 4, 4), dtype=np.uint8)), 2) == []


def test_an_outline_is_the_border_of_the_region() -> None:
    inside = np.zeros((7, 7), dtype=bool)
    inside[1:6, 1:6] = True
    ring = outline(inside)
    assert ring.sum() == 16 and not ring[3, 3] and ring[1, 1] and not ring[0, 0]
    assert outline(inside, width=2).sum() == 24
    assert not outline(np.zeros((4, 4), dtype=bool)).any()


# --- the mask's frame order -----------------------------------------------------------------


def source(uid: str, frames: int = 1) -> Dataset:
    ds = Dataset()
    ds.SOPInstanceUID = uid
    if frames > 1:
        ds.NumberOfFrames = frames
    return ds


def test_single_frame_sources_take_their_mask_frame_by_uid() -> None:
    m = mask(np.zeros((3, 2, 2), dtype=np.uint8), ("1.2.3.0", "1.2.3.1", "1.2.3.2"))
    order = frame_order(m, [source("1.2.3.2"), source("1.2.3.0"), source("1.2.3.1")])
    assert order.tolist() == [2, 0, 1]


def test_a_multi_frame_source_takes_its_frames_by_number() -> None:
    m = Mask(np.zeros((3, 2, 2), dtype=np.uint8), ("1.2.9",) * 3, (3, 1, 2), None, None)
    assert frame_order(m, [source("1.2.9", frames=3)]).tolist() == [1, 2, 0]
    short = Mask(np.zeros((2, 2, 2), dtype=np.uint8), ("1.2.9",) * 2, (1, 2), None, None)
    with pytest.raises(ResultError, match="the mask covers 2 of 3 frames"):
        frame_order(short, [source("1.2.9", frames=3)])


def test_a_mask_that_does_not_match_its_sources_is_a_result_error() -> None:
    m = mask(np.zeros((2, 2, 2), dtype=np.uint8))
    with pytest.raises(ResultError, match="2 mask frames for 3 source instances"):
        frame_order(m, [source("1.2.3.0"), source("1.2.3.1"), source("1.2.3.7")])


# --- files ----------------------------------------------------------------------------------


def test_a_saved_mask_loads_back_whole(tmp_path: Path) -> None:
    labels = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    confidence = np.full((2, 3, 4), 200, dtype=np.uint8)
    path = tmp_path / "mask.npz"
    np.savez(
        path,
        labels=labels,
        sop_instance_uids=np.array(["1.2.3.0", "1.2.3.1"]),
        frame_numbers=np.array([0, 0]),
        confidence=confidence,
    )
    m = load_mask(path)
    assert np.array_equal(m.labels, labels) and m.sop_instance_uids == ("1.2.3.0", "1.2.3.1")
    assert m.frame_numbers == (0, 0) and m.probabilities is None
    assert m.confidence is not None and np.array_equal(m.confidence, confidence)


def test_an_object_is_written_whole_under_its_uid(tmp_path: Path) -> None:
    from pydicom.dataset import FileMetaDataset  # noqa: PLC0415
    from pydicom.uid import ExplicitVRLittleEndian  # noqa: PLC0415

    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = write_object(ds, tmp_path / "objects", "seg")
    assert path.name == f"seg-{ds.SOPInstanceUID}.dcm"
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left
