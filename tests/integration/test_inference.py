"""The inference pipeline on real CT with tiny fixed-weight models in every supported form.

The expected mask is computed independently: HU from pydicom's pixel data and the rescale
attributes, thresholded in numpy. The pipeline must put exactly that on every source frame,
whatever the arrival order, gantry tilt or form of the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydicom import dcmread

from tests.models import THRESHOLD_HU, build_model, expected_masks, run_model, threshold_conv
from workers.inference.manifest import ModelError
from workers.inference.runners import ModelCache

TILTED = "dcm_qa_ct/In/Philips/S21610/S2010"


def ct_files(testdata: Path, folder: str = TILTED) -> list[Path]:
    return [p for p in (testdata / folder).iterdir() if p.name != "DIRFILE"]


@pytest.mark.parametrize("kind", ["torchscript", "state_dict", "monai_bundle"])
def test_each_model_form_gives_the_exact_mask_on_every_source_frame(
    testdata: Path, tmp_path: Path, kind: str
) -> None:
    files = ct_files(testdata)
    name = kind.replace("_", "-")
    build_model(tmp_path / "models", name, kind, threshold_hu=THRESHOLD_HU)
    summary = run_model(tmp_path / "models", name, files, tmp_path / "results").to_json()

    [series] = summary["series"]
    assert series["tilt_deg"] == pytest.approx(18.5, abs=0.1)
    saved = np.load(Path(summary["path"]) / series["mask"])
    expected = expected_masks(files)
    assert len(saved["sop_instance_uids"]) == len(files) == 54
    for uid, labels in zip(saved["sop_instance_uids"], saved["labels"], strict=True):
        np.testing.assert_array_equal(labels, expected[str(uid)], err_msg=uid)
    voxels = sum(int(m.sum()) for m in expected.values())
    [bone] = series["labels"]
    assert bone["voxels"] == voxels > 10_000
    ds = dcmread(files[0], stop_before_pixels=True)
    sy, sx = (float(v) for v in ds.PixelSpacing)
    # voxel volume: pixel area x the slice step's component along the normal (the gap).
    gap = np.diff(np.sort(_positions_along_normal(files)))
    assert bone["volume_ml"] == pytest.approx(
        voxels * sy * sx * float(np.mean(gap)) / 1000, rel=1e-6
    )
    assert bone["mean"] > THRESHOLD_HU
    written = json.loads((Path(summary["path"]) / "summary.json").read_text())
    assert written["weights_sha256"] == summary["weights_sha256"]


def _positions_along_normal(files: list[Path]) -> np.ndarray:
    out = []
    for path in files:
        ds = dcmread(path, stop_before_pixels=True)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        normal = np.cross(iop[:3], iop[3:])
        out.append(float(np.array([float(v) for v in ds.ImagePositionPatient]) @ normal))
    return np.array(out)


def test_resampled_grid_and_sliding_window_map_back_onto_the_source_frames(
    testdata: Path, tmp_path: Path
) -> None:
    """Through a coarser model grid and a sliding window the mask must still land on the source
    frames: it can only differ from the exact threshold at boundaries (interpolation)."""
    files = ct_files(testdata)
    expected = expected_masks(files)
    gap = float(np.mean(np.diff(np.sort(_positions_along_normal(files)))))
    ds = dcmread(files[0], stop_before_pixels=True)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    for name, spacing, roi, min_dice in [
        # twice as fine on every axis: each source voxel is a model voxel, so the round trip
        # is exact; a grid shifted by even a fraction of a voxel would not be
        ("fine", (gap / 2, dy / 2, dx / 2), None, 0.999),
        # coarser slices: thin bone loses to partial volume, nothing more
        ("coarse", (2.0, 0.5, 0.5), (16, 96, 96), 0.9),
    ]:
        extra = f"target_spacing_mm = {list(spacing)}"
        if roi:
            extra += f"\n[inference]\nroi_size = {list(roi)}\noverlap = 0.25"
        build_model(tmp_path / "models", name, "torchscript", extra=extra)
        summary = run_model(
            tmp_path / "models", name, files, tmp_path / "results", job=name
        ).to_json()
        [series] = summary["series"]
        assert series["model_shape"] != series["source_shape"]
        saved = np.load(Path(summary["path"]) / series["mask"])
        got = saved["labels"]
        want = np.stack([expected[str(uid)] for uid in saved["sop_instance_uids"]])
        dice = 2 * float((got & want).sum()) / float(got.sum() + want.sum())
        assert dice > min_dice, (name, dice)


def test_corrupted_weights_are_refused_at_load(testdata: Path, tmp_path: Path) -> None:
    folder = build_model(tmp_path / "models", "broken", "torchscript")
    weights = folder / "model.ts"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="fail the sha256 check"):
        run_model(tmp_path / "models", "broken", ct_files(testdata)[:2], tmp_path / "results")


def test_unknown_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"no manifest\.toml"):
        ModelCache(tmp_path, "cpu").get("nope")


def test_out_of_memory_retries_with_a_smaller_window_then_gives_up_as_transient(
    testdata: Path, tmp_path: Path
) -> None:
    from dicom_node.errors import Transient  # noqa: PLC0415
    from tests.models import OutOfMemoryAbove  # noqa: PLC0415
    from workers.inference.pipeline import infer  # noqa: PLC0415
    from workers.inference.runners import LoadedModel  # noqa: PLC0415

    build_model(
        tmp_path,
        "oom",
        "torchscript",
        extra="[inference]\nroi_size = [32, 256, 256]\nsw_batch_size = 2",
    )
    manifest = ModelCache(tmp_path, "cpu").get("oom").manifest
    x = torch.rand(1, 1, 64, 256, 256) * 0.3 + 0.6
    fits = OutOfMemoryAbove(max_voxels=16 * 128 * 128)
    probs = infer(LoadedModel(manifest, fits, torch.device("cpu"), "-"), x)
    # batch 2 -> 1, then the window halves until it fits; the result is the same convolution
    assert fits.calls[0][0] == 2 and fits.calls[-1][2:] == (16, 128, 128)
    expected = torch.softmax(threshold_conv(300.5)(x), dim=1)
    torch.testing.assert_close(probs, expected, atol=1e-4, rtol=0)
    never = OutOfMemoryAbove(max_voxels=1)
    with pytest.raises(Transient, match="out of memory on cpu even with window"):
        infer(LoadedModel(manifest, never, torch.device("cpu"), "-"), x)
