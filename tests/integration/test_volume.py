"""Series -> volume on real data: gantry tilt, sagittal MR, compressed syntaxes, multi-frame."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset

from workers.inference.decode import DecodeError
from workers.inference.volume import VolumeError, load_series

TILTED = "dcm_qa_ct/In/Philips/S21610/S2010"
STRAIGHT = "dcm_qa_ct/In/Philips/S21570/S2010"
SAGITTAL = "dcm_qa_decubitus/In/HFS/3_t1_fl2d_sag"
SAGITTAL_RLE = "derived_compressed/dcm_qa_decubitus_HFS_t1_rle/In/HFS/3_t1_fl2d_sag"


def series(testdata: Path, folder: str) -> list[Path]:
    """The series' files in slice order (their names sort I10, I100, I110, ...)."""
    files = [p for p in (testdata / folder).iterdir() if p.name != "DIRFILE"]
    return sorted(files, key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber))


def test_gantry_tilted_ct_lands_where_each_slice_says(testdata: Path) -> None:
    files = series(testdata, TILTED)
    shuffled = files[:]
    random.Random(7).shuffle(shuffled)
    vol = load_series(shuffled)  # arrival order must not matter
    assert vol.array.shape == (54, 512, 512)
    assert vol.tilt_deg == pytest.approx(18.5, abs=0.1)
    assert vol.uniform
    by_uid = {dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for p in files}
    for k, ref in enumerate(vol.frames):
        ds = dcmread(by_uid[ref.sop_instance_uid])
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        assert np.allclose(vol.patient_point(0, 0, k), ipp, atol=1e-3)
        row, col = (
            np.array([float(v) for v in ds.ImageOrientationPatient[i : i + 3]]) for i in (0, 3)
        )
        dy, dx = (float(v) for v in ds.PixelSpacing)
        expected = ipp + 100 * dx * row + 200 * dy * col
        assert np.allclose(vol.patient_point(100, 200, k), expected, atol=1e-3)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        assert np.array_equal(vol.array[k], hu.astype(np.float32))
    # The step is not along the normal: that is what the tilt means.
    assert abs(float(vol.affine[:3, 2] @ vol.normal)) < np.linalg.norm(vol.affine[:3, 2])


def test_straight_ct_and_sagittal_mr(testdata: Path) -> None:
    ct = load_series(series(testdata, STRAIGHT))
    assert ct.tilt_deg == pytest.approx(0, abs=1e-3) and ct.uniform
    assert np.linalg.norm(ct.affine[:3, 2]) == pytest.approx(5.0, abs=1e-3)
    mr = load_series(series(testdata, SAGITTAL))
    assert mr.array.shape == (35, 256, 256)
    assert abs(mr.normal[0]) > 0.9  # sagittal: the normal is along patient x


def test_rle_series_decodes_to_the_same_volume(testdata: Path) -> None:
    plain = load_series(series(testdata, SAGITTAL))
    rle = load_series(series(testdata, SAGITTAL_RLE))
    assert np.array_equal(plain.array, rle.array)
    assert np.allclose(plain.affine, rle.affine)


def test_legacy_converted_multiframe_equals_its_single_frames(testdata: Path) -> None:
    root = testdata / "dcmqi/data/segmentations/23x38x3"
    single = load_series(sorted((root / "image").iterdir()))
    multi = load_series(sorted((root / "multiframe").iterdir()))
    assert np.array_equal(single.array, multi.array)
    assert np.allclose(single.affine, multi.affine, atol=1e-4)
    assert [f.frame_number for f in multi.frames] == [1, 2, 3]


@pytest.mark.parametrize(
    ("syntax", "lossless"),
    [
        ("J2KR", True),
        ("JLSL", True),
        ("JPLL", True),
        ("RLE", True),
        ("J2KI", False),
        ("JLSN", False),
    ],
)
def test_wg04_compressed_ct_decodes(testdata: Path, syntax: str, lossless: bool) -> None:
    ref = load_series([testdata / "wg04/data/WG04/REF/CT1_UNC"]).array
    got = load_series([testdata / f"wg04/data/WG04/{syntax}/CT1_{syntax}"]).array
    if lossless:
        assert np.array_equal(ref, got)
    else:  # WG04's lossy versions are strongly compressed: within 1 % of the dynamic range
        assert float(np.abs(ref - got).mean()) < 0.01 * float(ref.max() - ref.min())


def test_12_bit_jpeg_extended_falls_back_to_dcmdjpeg(testdata: Path) -> None:
    """PITFALLS 13: every pydicom plugin refuses these; dcmtk's dcmdjpeg decodes them."""
    ref = load_series([testdata / "wg04/data/WG04/REF/MR1_UNC"]).array
    got = load_series([testdata / "wg04/data/WG04/JPLY/MR1_JPLY"]).array
    assert got.shape == ref.shape
    assert float(np.abs(ref - got).mean()) < 0.05 * float(ref.max())


def test_undecodable_pixel_data_is_a_clear_permanent_error(testdata: Path) -> None:
    with pytest.raises(
        DecodeError, match=r"cannot decode pixel data \(1\.2\.840\.10008\.1\.2\.4\.91"
    ):
        load_series([testdata / "pydicom/JPEG2000-embedded-sequence-delimiter.dcm"])


def test_refusals(testdata: Path) -> None:
    tilted, straight = series(testdata, TILTED), series(testdata, STRAIGHT)
    # two orientations are two stacks; neither is refused, the larger one runs
    mixed = load_series(tilted[:3] + straight[:4])
    assert sorted(s["frames"] for s in mixed.stacks) == [3, 4] and len(mixed.frames) == 4
    with pytest.raises(VolumeError, match=r"slices missing between instance 10 .* and instance 15"):
        load_series(straight[:10] + straight[14:])
    # the same file twice is one frame: identical duplicates collapse
    assert len(load_series(straight[:5] + straight[:1]).frames) == 5
    with pytest.raises(VolumeError, match="no geometry"):
        load_series([testdata / "pydicom-data/emri_small.dcm"])


def _frame_geometry(ds: Dataset, frame: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ImagePositionPatient, ImageOrientationPatient, PixelSpacing) of one frame, read the way
    the standard places them: top level for single-frame, functional groups for multi-frame."""
    if frame is None:
        src_pos = src_ori = src_px = ds
    else:
        shared = ds.SharedFunctionalGroupsSequence[0]
        per = ds.PerFrameFunctionalGroupsSequence[frame - 1]

        def pick(keyword: str) -> Dataset:
            return (per.get(keyword) or shared.get(keyword))[0]

        src_pos = pick("PlanePositionSequence")
        src_ori = pick("PlaneOrientationSequence")
        src_px = pick("PixelMeasuresSequence")
    return (
        np.array([float(v) for v in src_pos.ImagePositionPatient]),
        np.array([float(v) for v in src_ori.ImageOrientationPatient]),
        np.array([float(v) for v in src_px.PixelSpacing]),
    )


@pytest.mark.parametrize(
    "files",
    [
        TILTED,
        SAGITTAL,
        SAGITTAL_RLE,
        "pydicom-data/eCT_Supplemental.dcm",  # Enhanced CT
        "dcmqi/data/segmentations/23x38x3/multiframe/mf.dcm",  # Legacy Converted Enhanced CT
    ],
)
def test_affine_puts_every_corner_voxel_where_the_dicom_geometry_says(
    testdata: Path, files: str
) -> None:
    path = testdata / files
    paths = [p for p in path.iterdir() if p.name != "DIRFILE"] if path.is_dir() else [path]
    vol = load_series(paths)
    datasets = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in paths)}
    n, rows, cols = vol.array.shape
    dx = float(np.linalg.norm(vol.affine[:3, 0]))
    dy = float(np.linalg.norm(vol.affine[:3, 1]))
    for k, ref in enumerate(vol.frames):
        ipp, iop, spacing = _frame_geometry(datasets[ref.sop_instance_uid], ref.frame_number)
        row_dir, col_dir = iop[:3], iop[3:]
        assert (dy, dx) == pytest.approx((spacing[0], spacing[1]), abs=1e-6)
        corners = {
            (0, 0): ipp,
            (cols - 1, 0): ipp + (cols - 1) * spacing[1] * row_dir,
            (0, rows - 1): ipp + (rows - 1) * spacing[0] * col_dir,
            (cols - 1, rows - 1): ipp
            + (cols - 1) * spacing[1] * row_dir
            + (rows - 1) * spacing[0] * col_dir,
        }
        for (c, r), expected in corners.items():
            np.testing.assert_allclose(vol.patient_point(c, r, k), expected, atol=1e-3)
    if n > 1:  # the slice spacing along the normal is the gap between the frames' positions
        normal = vol.normal
        along = sorted(
            float(_frame_geometry(datasets[f.sop_instance_uid], f.frame_number)[0] @ normal)
            for f in vol.frames
        )
        assert float(vol.affine[:3, 2] @ normal) == pytest.approx(
            (along[-1] - along[0]) / (n - 1), abs=1e-4
        )


@pytest.mark.parametrize("name", ["emri_small.dcm", "emri_small_RLE.dcm"])
def test_enhanced_mr_without_functional_groups_is_refused_not_guessed(
    testdata: Path, name: str
) -> None:
    """pydicom's small Enhanced MR samples carry pixels but no plane position/orientation at all:
    any volume would be a guess, so the job gets a permanent error that says so."""
    path = testdata / "pydicom-data" / name
    assert dcmread(path).pixel_array.shape == (10, 64, 64)  # it decodes; geometry is the problem
    with pytest.raises(VolumeError, match="without per-frame functional groups: no geometry"):
        load_series([path])
