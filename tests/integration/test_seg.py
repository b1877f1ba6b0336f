"""SEG from a real pipeline result on the gantry-tilted CT: valid (dciodvfy, 0 errors), exact
frame by frame on read-back, in the right place, with deterministic UIDs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread

from tests.integration.test_inference import ct_files, run_model
from tests.models import build_model
from workers.inference.runners import ModelCache
from workers.results.seg import seg_from_result


def dciodvfy_errors(path: Path) -> list[str]:
    done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def tilted_result(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("seg")
    build_model(tmp / "models", "threshold", "torchscript")
    return run_model(tmp / "models", "threshold", ct_files(testdata), tmp / "results"), tmp


def test_seg_on_tilted_ct_is_valid_exact_and_in_place(
    testdata: Path, tilted_result: tuple[dict, Path]
) -> None:
    summary, tmp = tilted_result
    [series] = summary["series"]
    files = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in ct_files(testdata)}
    manifest = ModelCache(tmp / "models", "cpu").get("threshold").manifest
    seg = seg_from_result(Path(summary["path"]), series["mask"], files, manifest)
    out = tmp / "seg.dcm"
    seg.save_as(out)
    assert dciodvfy_errors(out) == []

    back = hd.seg.segread(out)
    saved = np.load(Path(summary["path"]) / series["mask"])
    assert back.SeriesDescription == "AI threshold 1.0.0"
    assert back.StudyInstanceUID == dcmread(next(iter(files.values()))).StudyInstanceUID
    assert [d.segment_label for d in back.SegmentSequence] == ["bone"]
    # frame by frame, through the SEG's own references to the source instances
    for uid, expected in zip(saved["sop_instance_uids"], saved["labels"], strict=True):
        got = back.get_pixels_by_source_instance(
            source_sop_instance_uids=[str(uid)], segment_numbers=[1], ignore_spatial_locations=True
        )[0, :, :, 0]
        np.testing.assert_array_equal(got, expected, err_msg=str(uid))
    # the centroid in patient coordinates from the SEG's own plane positions = the mask's
    mask_points, seg_points = [], []
    for frame in back.PerFrameFunctionalGroupsSequence:
        ipp = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        src = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = list(saved["sop_instance_uids"]).index(src)
        rows, cols = np.nonzero(saved["labels"][k])
        dy, dx = (
            float(v)
            for v in back.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        )
        iop = np.array(
            back.SharedFunctionalGroupsSequence[0]
            .PlaneOrientationSequence[0]
            .ImageOrientationPatient,
            dtype=float,
        )
        seg_points.append(ipp + np.outer(cols * dx, iop[:3]) + np.outer(rows * dy, iop[3:]))
        ds = dcmread(files[src], stop_before_pixels=True)
        src_ipp = np.array(ds.ImagePositionPatient, dtype=float)
        mask_points.append(src_ipp + np.outer(cols * dx, iop[:3]) + np.outer(rows * dy, iop[3:]))
    np.testing.assert_allclose(
        np.concatenate(seg_points).mean(0), np.concatenate(mask_points).mean(0), atol=0.25
    )


def test_seg_uids_are_deterministic(testdata: Path, tilted_result: tuple[dict, Path]) -> None:
    summary, tmp = tilted_result
    [series] = summary["series"]
    files = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in ct_files(testdata)}
    manifest = ModelCache(tmp / "models", "cpu").get("threshold").manifest
    a = seg_from_result(Path(summary["path"]), series["mask"], files, manifest)
    b = seg_from_result(Path(summary["path"]), series["mask"], files, manifest)
    assert (a.SOPInstanceUID, a.SeriesInstanceUID) == (b.SOPInstanceUID, b.SeriesInstanceUID)
    assert re.fullmatch(r"2\.25\.\d+", a.SOPInstanceUID)
