"""The ct-tissue teacher on a phantom whose answer is known by construction, and the pixel
decoder on real files that pydicom's plugins cannot read (dcmtk's dcmdjpeg as the fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from workers.inference.decode import DecodeError, pixel_array, read_instance
from workers.labelers import ct_tissue
from workers.labelers.ct_tissue import ADIPOSE, AIR, BONE, SOFT_TISSUE


def phantom() -> np.ndarray:
    """8 slices of 64²: air (-1000) around a body disc of radius 24 with a 4-voxel fat rim
    (-100), soft tissue inside (40), a bone core of radius 5 (700), an air pocket inside the
    body (a sinus, -900), a table bar below the body that touches it through one row of
    voxels, and one single-voxel speck of bone in the soft tissue."""
    _, y, x = np.mgrid[0:8, 0:64, 0:64]
    r = np.hypot(y - 30, x - 32)
    hu = np.full((8, 64, 64), -1000.0, np.float32)
    hu[r < 24] = -100.0
    hu[r < 20] = 40.0
    hu[r < 5] = 700.0
    hu[(np.hypot(y - 30, x - 44) < 3)] = -900.0  # the sinus
    hu[:, 58:62, 4:60] = 300.0  # the table
    hu[:, 54:58, 31] = 300.0  # a one-voxel-wide contact: opened away
    hu[:, 20, 20] = 900.0  # the speck
    return hu


@pytest.fixture(scope="module")
def labels() -> np.ndarray:
    return ct_tissue.label(phantom(), (2.0, 1.0, 1.0))


def test_the_body_is_the_largest_object_with_its_holes_filled() -> None:
    body = ct_tissue.body_mask(phantom())
    assert body[:, 30, 32].all() and body[:, 30, 44].all()  # centre and the enclosed sinus
    assert not body[:, 60, 10].any()  # the table is not the patient
    assert not body[:, 2, 2].any()
    assert not ct_tissue.body_mask(np.full((2, 8, 8), -1000.0)).any()  # nothing there


def test_each_range_gets_its_label_inside_the_body(labels: np.ndarray) -> None:
    assert (labels[:, 30, 32] == BONE).all()
    assert (labels[:, 30, 20] == SOFT_TISSUE).all()
    assert (labels[:, 30, 54] == ADIPOSE).all()  # the rim, r 22
    assert (labels[:, 30, 44] == AIR).all()  # the sinus belongs to the body
    assert labels[:, 60, 10].max() == 0 and labels[:, 2, 2].max() == 0  # table and outside air


def test_single_voxel_noise_is_voted_away(labels: np.ndarray) -> None:
    assert (labels[:, 20, 20] == SOFT_TISSUE).all()


def test_pieces_smaller_than_the_minimum_volume_are_unlabelled() -> None:
    hu = phantom()
    hu[3, 40:44, 24:28] = 700.0  # 4x4 voxels of bone in one slice, in soft tissue
    coarse = ct_tissue.label(hu, (4.0, 2.0, 2.0))  # 16 mm³ voxels: the piece is over 20 mm³
    fine = ct_tissue.label(hu, (1.0, 0.5, 0.5))  # 0.25 mm³ voxels: the same piece is 4 mm³
    assert coarse[3, 41, 25] == BONE
    assert fine[3, 41, 25] == 0
    assert fine[3, 30, 32] == BONE  # the core is large at any spacing


def test_the_teacher_is_deterministic() -> None:
    hu = phantom()
    assert np.array_equal(ct_tissue.label(hu, (2, 1, 1)), ct_tissue.label(hu.copy(), (2, 1, 1)))


def test_tissue_labels_the_whole_frame_and_inside_body_clears_the_rest() -> None:
    hu = phantom()
    everywhere = ct_tissue.tissue(hu)
    assert everywhere[0, 2, 2] == AIR  # the CNN learns air around the patient too
    inside = ct_tissue.inside_body(everywhere, hu)
    assert inside[0, 2, 2] == 0 and inside[0, 30, 32] == BONE


def test_a_jpeg_that_pydicoms_plugins_refuse_is_decoded_by_dcmdjpeg(testdata: Path) -> None:
    path = testdata / "pydicom/JPEG-lossy.dcm"
    ds = read_instance(path)
    with pytest.raises(
        DecodeError, match=r"cannot decode pixel data \(1\.2\.840\.10008\.1\.2\.4\.51\)"
    ):
        pixel_array(ds)  # without the file, no fallback
    pixels = pixel_array(ds, path)
    assert pixels.shape == (1024, 256)
    reference = dcmread(testdata / "pydicom/JPGExtended.dcm")  # the same image, readable
    assert np.abs(pixels.astype(int) - pixel_array(reference).astype(int)).max() <= 1


def test_a_syntax_nothing_can_decode_names_itself(testdata: Path) -> None:
    path = testdata / "pydicom/JPEG2000-embedded-sequence-delimiter.dcm"
    with pytest.raises(
        DecodeError, match=r"cannot decode pixel data \(1\.2\.840\.10008\.1\.2\.4\.91\)"
    ):
        pixel_array(read_instance(path), path)


def test_a_stored_file_that_no_longer_parses_is_a_permanent_error(
    tmp_path: Path, ct_slice: Path
) -> None:
    broken = tmp_path / "1.2.3.dcm"
    broken.write_bytes(b"overwritten by a text editor\n" * 20)
    with pytest.raises(DecodeError, match=r"cannot read stored instance 1\.2\.3\.dcm: "):
        read_instance(broken)
    (tmp_path / "empty.dcm").write_bytes(b"")
    with pytest.raises(DecodeError):
        read_instance(tmp_path / "empty.dcm")
