"""Volumes as the SR reports them (``workers.inference.pipeline.measure``): the sum over the
source frames of the label's area times that frame's real extent along the normal, on real CT
slices re-spaced into two spacing regimes. Computed here independently from the headers and
pixels written, not from the node's volume."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.models import THRESHOLD_HU, build_model
from tests.recompose import new_series, respace, straight, write
from workers.inference.pipeline import measure
from workers.inference.runners import ModelCache
from workers.inference.volume import load_series

GAPS = (5.0, 5.0, 7.0, 7.0)  # two regimes: 5 mm, then 7 mm
EXTENTS = (5.0, 5.0, 6.0, 7.0, 7.0)  # half the gap to each neighbour; the one gap at the ends


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> list[Path]:
    slices = respace(new_series(straight(testdata), "two regimes"), GAPS)
    return write(slices, tmp_path_factory.mktemp("regimes"))


def hu(path: Path) -> np.ndarray:
    ds = dcmread(path)
    return np.asarray(ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept))


def test_volume_is_area_times_each_frames_own_extent(files: list[Path], tmp_path: Path) -> None:
    volume = load_series(files)
    assert volume.slice_extents() == pytest.approx(EXTENTS)
    assert not volume.uniform
    build_model(tmp_path, "bone", "torchscript")
    manifest = ModelCache(tmp_path, "cpu").get("bone").manifest
    labels = (volume.array > THRESHOLD_HU).astype(np.uint8)
    (bone,) = measure(volume, labels, manifest, max_probability={1: 0.97})
    by_uid = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    spacing = dcmread(files[0], stop_before_pixels=True).PixelSpacing
    area_mm2 = float(spacing[0]) * float(spacing[1])
    expected_ml = voxels = 0.0
    weighted, weights = 0.0, 0.0
    for ref, extent in zip(volume.frames, EXTENTS, strict=True):
        values = hu(by_uid[ref.sop_instance_uid])
        inside = values[values > THRESHOLD_HU]
        voxels += inside.size
        expected_ml += inside.size * area_mm2 * extent / 1000
        weighted += float(inside.sum()) * extent
        weights += inside.size * extent
    assert bone.voxels == voxels > 0
    assert bone.volume_ml == pytest.approx(expected_ml, rel=1e-9)
    assert bone.mean == pytest.approx(weighted / weights, rel=1e-6)
    assert bone.max_probability == 0.97
    nominal = voxels * area_mm2 * 5.0 / 1000  # one nominal spacing would under-count
    assert bone.volume_ml > nominal * 1.05


def test_an_empty_label_has_no_volume_and_no_mean(files: list[Path], tmp_path: Path) -> None:
    volume = load_series(files)
    build_model(tmp_path, "bone", "torchscript")
    manifest = ModelCache(tmp_path, "cpu").get("bone").manifest
    (bone,) = measure(volume, np.zeros(volume.array.shape, np.uint8), manifest)
    assert (bone.voxels, bone.volume_ml, bone.mean, bone.std, bone.max_probability) == (
        0, 0.0, None, None, None,
    )  # fmt: skip
