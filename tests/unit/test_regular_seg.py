"""The regularised SEG, for readers that rebuild one rectangular volume (3D Slicer's dcmqi):
on real slices of the gantry-tilted Philips CT, and of the straight one re-spaced into two
spacings. dcmqi's ``segimage2itkimage`` (from pip, the converter Slicer's DICOM plugin uses)
refuses the source-aligned SEG of the tilted CT and reads the regularised one, voxel for voxel;
every regular frame lies in its source slice's plane."""

from __future__ import annotations

import gzip
import json
import re
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset

from dicom_node.jobs.stacks import normal_of
from dicom_node.settings import BUILTIN_MODELS
from tests import recompose as rc
from tests.helpers import dciodvfy_errors
from tests.models import hounsfield
from workers.inference.manifest import Manifest, load_manifest
from workers.results.regular import frame_headers, regularise
from workers.results.seg import Mask, build_seg

AT = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
WEIGHTS = "ef" * 32


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    return load_manifest(BUILTIN_MODELS, "ct-tissue")[0]


def sorted_slices(slices: list[Dataset]) -> list[Dataset]:
    return sorted(slices, key=lambda ds: float(rc.floats(ds.ImagePositionPatient) @ rc.normal(ds)))


def banded(sources: list[Dataset]) -> Mask:
    """Bone above 300 HU, soft tissue 0-300 HU, from the real pixels."""
    hu = np.stack([hounsfield(ds) for ds in sources])
    labels = np.zeros(hu.shape, np.uint8)
    labels[(hu > 0) & (hu <= 300)] = 2
    labels[hu > 300] = 3
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    return Mask(labels=labels, sop_instance_uids=uids, frame_numbers=(0,) * len(uids))


def read_nrrd(path: Path) -> tuple[dict[str, str], np.ndarray]:
    """dcmqi's label map: the header's fields, and the voxels as [slices, rows, columns]."""
    raw = path.read_bytes()
    head, _, body = raw.partition(b"\n\n")
    fields = dict(line.split(": ", 1) for line in head.decode().splitlines()[1:] if ": " in line)
    assert fields["type"] == "short" and fields["encoding"] == "gzip", fields
    sizes = [int(v) for v in fields["sizes"].split()]
    voxels = np.frombuffer(gzip.decompress(body), dtype="<i2").reshape(sizes[::-1])
    return fields, voxels


def dcmqi(seg_path: Path, out: Path) -> str:
    """segimage2itkimage's output (it exits 0 even when it writes nothing: PITFALLS 31)."""
    out.mkdir()
    done = subprocess.run(
        ["segimage2itkimage", "--inputDICOM", str(seg_path), "--outputDirectory", str(out)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return done.stdout + done.stderr


def regular_seg_read_by_dcmqi(
    slices: list[Dataset], mask: Mask, manifest: Manifest, tmp_path: Path
) -> Path:
    """The regular SEG, written, dciodvfy-clean, and converted by dcmqi into ``tmp_path/out``
    without an error; returns its path."""
    seg = build_seg(slices, mask, manifest, weights_sha256=WEIGHTS, at=AT, geometry="regular")
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    said = dcmqi(path, tmp_path / "out")
    assert "ERROR" not in said, said
    return path


@pytest.fixture(scope="module")
def tilted(testdata: Path) -> list[Dataset]:
    return sorted_slices(rc.read_series(testdata, rc.TILTED))


def test_dcmqi_refuses_the_source_aligned_seg_of_a_tilted_ct(
    tilted: list[Dataset], manifest: Manifest, tmp_path: Path
) -> None:
    """The reason the regular profile exists; if dcmqi learns to read it, this says so."""
    seg = build_seg(tilted, banded(tilted), manifest, weights_sha256=WEIGHTS, at=AT)
    seg.save_as(tmp_path / "seg.dcm", enforce_file_format=True)
    said = dcmqi(tmp_path / "seg.dcm", tmp_path / "out")
    assert "is outside image geometry" in said
    assert not list((tmp_path / "out").glob("*.nrrd"))


def test_dcmqi_reads_the_regularised_seg_of_a_tilted_ct_voxel_for_voxel(
    tilted: list[Dataset], manifest: Manifest, tmp_path: Path
) -> None:
    mask = banded(tilted)
    path = regular_seg_read_by_dcmqi(tilted, mask, manifest, tmp_path)
    grid = regularise(mask.labels, frame_headers(tilted))
    assert grid is not None and grid.pixels.shape[0] == len(tilted)  # one spacing: one frame each
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    labels = [a[0]["SegmentLabel"] for a in meta["segmentAttributes"]]
    for number, name in ((2, "soft tissue"), (3, "bone")):
        fields, voxels = read_nrrd(tmp_path / "out" / f"{labels.index(name) + 1}.nrrd")
        assert voxels.shape == grid.pixels.shape
        assert np.array_equal(voxels > 0, grid.pixels == number)
        # nothing fell off the widened frame: as many voxels as the mask has
        assert int((voxels > 0).sum()) == int((mask.labels == number).sum())
        # the volume's third axis is the slice normal, at the spacing along it
        third = [
            float(v) for v in re.findall(r"\(([^)]*)\)", fields["space directions"])[2].split(",")
        ]
        n = normal_of(rc.floats(tilted[0].ImageOrientationPatient))
        gap = float(
            (rc.floats(tilted[1].ImagePositionPatient) - rc.floats(tilted[0].ImagePositionPatient))
            @ n
        )
        assert np.allclose(third, n * gap, atol=1e-3)
    back = hd.seg.segread(path)  # and highdicom reads it back
    assert back.number_of_segments == 4


def test_every_regular_frame_lies_in_its_source_slices_plane(
    tilted: list[Dataset], manifest: Manifest
) -> None:
    seg = build_seg(
        tilted, banded(tilted), manifest, weights_sha256=WEIGHTS, at=AT, geometry="regular"
    )
    n = normal_of(rc.floats(tilted[0].ImageOrientationPatient))
    planes = sorted({round(float(rc.floats(ds.ImagePositionPatient) @ n), 3) for ds in tilted})
    got = sorted(
        {
            round(float(np.array(f.PlanePositionSequence[0].ImagePositionPatient, float) @ n), 3)
            for f in seg.PerFrameFunctionalGroupsSequence
        }
    )
    assert np.allclose(got, planes, atol=2e-3)
    iop = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    assert np.allclose([float(v) for v in iop], rc.floats(tilted[0].ImageOrientationPatient))


def test_a_rectangular_stack_needs_no_regular_grid(testdata: Path, manifest: Manifest) -> None:
    straight = sorted_slices(rc.straight(testdata))
    mask = banded(straight)
    assert regularise(mask.labels, frame_headers(straight)) is None
    source = build_seg(straight, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    regular = build_seg(straight, mask, manifest, weights_sha256=WEIGHTS, at=AT, geometry="regular")
    assert regular.SOPInstanceUID == source.SOPInstanceUID  # one object, shared by both profiles


def test_two_spacings_become_one_and_dcmqi_reads_it(
    testdata: Path, manifest: Manifest, tmp_path: Path
) -> None:
    gaps = [5.0] * 6 + [10.0] * 4 + [5.0] * 3
    slices = sorted_slices(rc.new_series(rc.respace(rc.straight(testdata), gaps), "two spacings"))
    mask = banded(slices)
    grid = regularise(mask.labels, frame_headers(slices))
    assert grid is not None
    assert grid.pixels.shape[0] == int(sum(gaps) / 5.0) + 1  # even 5 mm frames across the gaps
    regular_seg_read_by_dcmqi(slices, mask, manifest, tmp_path)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    labels = [a[0]["SegmentLabel"] for a in meta["segmentAttributes"]]
    _, voxels = read_nrrd(tmp_path / "out" / f"{labels.index('bone') + 1}.nrrd")
    assert np.array_equal(voxels > 0, grid.pixels == 3)
    # each source slice is one of the frames; a frame in a 10 mm gap repeats its nearest slice
    # (halfway, the earlier one)
    assert np.array_equal(grid.pixels[6], mask.labels[6])  # 30 mm: slice 6
    assert np.array_equal(grid.pixels[7], mask.labels[6])  # 35 mm: halfway, slice 6 again
    assert np.array_equal(grid.pixels[8], mask.labels[7])  # 40 mm: slice 7
    assert np.array_equal(grid.pixels[-1], mask.labels[-1])
