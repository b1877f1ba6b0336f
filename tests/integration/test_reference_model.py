"""The ct-tissue reference model: trained by the project, shipped as a MONAI bundle, run by the
node on real CT, checked by ``dicom-node models evaluate``.

- Training runs at smoke size (the script works; its bundle loads through the node's runner).
- The shipped weights: sha256 in the manifest, and held-out Dice against the labeler re-measured
  here through the node's own pipeline (not read from the committed metrics).
- ``models evaluate`` against a reference SEG written by the test, with the expected Dice,
  sensitivity and specificity computed independently from the pixel data.
- A corrupted weights file is a clear error at load; loading needs no network.
- End to end: CT in over C-STORE, the model in the embedded worker, SEG + SR + confidence map out
  to storescp; dciodvfy 0 errors; SR volumes equal SEG voxels x voxel volume within 1 %.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from dicom_node.domain import JobState
from tests.helpers import REPO, cli, dciodvfy_errors, dsrdump_ok, free_port
from tests.models import MODELS, build_model
from tests.peers import storescp
from tests.scenario import Scenario, destination
from workers.inference.manifest import ModelError, load_manifest, sha256_of
from workers.inference.runners import ModelCache

BUNDLE = MODELS / "ct-tissue"
HELD_OUT = "dcmqi/data/segmentations/ct-3slice"  # patient abdomen, never trained on
THRESHOLDS = {"bone": 0.90, "soft tissue": 0.90, "adipose tissue": 0.80, "air": 0.80}


def test_training_runs_at_smoke_size_and_its_bundle_loads(tmp_path: Path, testdata: Path) -> None:
    out = tmp_path / "models" / "ct-tissue"
    out.mkdir(parents=True)
    shutil.copy(BUNDLE / "manifest.toml", out / "manifest.toml")
    done = subprocess.run(
        [sys.executable, str(BUNDLE / "train.py"), "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "DICOM_NODE_TESTDATA": str(testdata)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["steps"] == 3 and metrics["config"]["smoke"] is True
    assert metrics["weights_sha256"] == sha256_of(out / "models" / "model.pt")
    assert set(metrics["held_out"]["labels"]) == set(THRESHOLDS)
    assert metrics["inputs"][HELD_OUT]["role"] == "held-out"
    manifest, _ = load_manifest(tmp_path / "models", "ct-tissue")
    assert manifest.runner.sha256 == metrics["weights_sha256"]  # train.py rewrote it
    loaded = ModelCache(tmp_path / "models", "cpu").get("ct-tissue")  # MONAI bundle runner
    assert type(loaded.module).__name__ == "DynUNet"


def test_shipped_bundle_is_complete_and_pinned() -> None:
    manifest, folder = load_manifest(MODELS, "ct-tissue")
    assert manifest.runner.kind == "monai_bundle"
    weights = folder / manifest.runner.weights
    assert weights.stat().st_size < 8 * 1024 * 1024
    assert sha256_of(weights) == manifest.runner.sha256
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["weights_sha256"] == manifest.runner.sha256
    assert metrics["config"]["smoke"] is False
    for name, floor in THRESHOLDS.items():
        assert metrics["held_out"]["labels"][name]["dice"] >= floor, name
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["network_data_format"]["outputs"]["pred"]["num_channels"] == manifest.classes
    assert json.loads((folder / "configs" / "inference.json").read_text())["network_def"]
    card = (folder / "README.md").read_text()
    for name in THRESHOLDS:
        assert f"{metrics['held_out']['labels'][name]['dice']:.3f}" in card, name


def test_held_out_dice_through_the_evaluate_command(tmp_path: Path, testdata: Path) -> None:
    """The acceptance numbers, measured now: the node's pipeline vs the labeler, held-out CT."""
    out = tmp_path / "report"
    done = cli(
        "models", "evaluate", "ct-tissue", "--cases", str(testdata / HELD_OUT), "--out", str(out),
        env={"DICOM_NODE_MODELS__ROOT": str(MODELS), "DICOM_NODE_MODELS__DEVICE": "cpu"},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert report["reference"] == "teacher workers.labelers.ct_tissue:label"
    assert len(report["cases"]) == 1 and report["cases"][0]["frames"] == 3
    for name, floor in THRESHOLDS.items():
        assert report["labels"][name]["dice"] >= floor, (name, report["labels"][name])
        assert "bone" in done.stdout and f"{report['labels'][name]['dice']:.4f}" in done.stdout
    assert (out / "evaluation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "evaluating" in done.stderr  # the progress bar


def _reference_seg(sources: list, mask: np.ndarray, path: Path) -> None:
    """A reference SEG as a site would have one: highdicom directly, one 'Bone' segment."""
    for ds in sources:  # dcmqi's CT has an empty Specific Character Set, which highdicom refuses
        if not ds.get("SpecificCharacterSet"):
            ds.pop("SpecificCharacterSet", None)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="reference bone",
                segmented_property_category=codes.SCT.Tissue,
                segmented_property_type=codes.SCT.Bone,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=50,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="reference",
        software_versions="1",
        device_serial_number="1",
    )
    seg.save_as(path)


@pytest.mark.filterwarnings("ignore::UserWarning:highdicom.*")
def test_evaluate_against_a_reference_seg_matches_an_independent_count(
    tmp_path: Path, testdata: Path
) -> None:
    """The threshold model predicts exactly HU > 300.5; the reference says HU > 100. The
    expected Dice, sensitivity, specificity and volumes come from the pixel data here."""
    cases = testdata / "dcmqi/data/segmentations/ct-3slice"
    build_model(tmp_path / "models", "threshold", "monai_bundle")
    sources = [dcmread(p) for p in sorted(cases.iterdir())]
    hu = np.stack([ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
                   for ds in sources])  # fmt: skip
    reference, predicted = hu > 100, hu > 300.5
    (tmp_path / "refs").mkdir()
    _reference_seg(sources, reference, tmp_path / "refs" / "bone.dcm")
    # a second series without a reference is reported as skipped, not scored
    other = tmp_path / "cases"
    shutil.copytree(cases, other / "ct")
    shutil.copy(testdata / "wg04/data/WG04/REF/CT1_UNC", other / "ct1.dcm")

    done = cli(
        "models", "evaluate", "threshold", "--cases", str(other),
        "--reference", str(tmp_path / "refs"), "--out", str(tmp_path / "report"),
        env={"DICOM_NODE_MODELS__ROOT": str(tmp_path / "models"),
             "DICOM_NODE_MODELS__DEVICE": "cpu"},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "report" / "evaluation.json").read_text())
    tp = int((reference & predicted).sum())
    fp, fn = int((predicted & ~reference).sum()), int((reference & ~predicted).sum())
    tn = reference.size - tp - fp - fn
    got = report["labels"]["bone"]
    assert (got["tp"], got["fp"], got["fn"], got["tn"]) == (tp, fp, fn, tn)
    assert got["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), abs=1e-4)
    assert got["sensitivity"] == pytest.approx(tp / (tp + fn), abs=1e-4)
    assert got["specificity"] == pytest.approx(tn / (tn + fp), abs=1e-4)
    spacing = [float(v) for v in sources[0].PixelSpacing]
    positions = sorted(float(ds.ImagePositionPatient[2]) for ds in sources)
    voxel_ml = spacing[0] * spacing[1] * (positions[1] - positions[0]) / 1000
    assert got["volume_difference_ml"] == pytest.approx((fp - fn) * voxel_ml, rel=1e-3)
    assert 0.3 < got["dice"] < 0.95  # the two masks differ: a test that can fail
    assert [s["reason"] for s in report["skipped"]] == ["no reference SEG"]
    assert report["reference"] == "DICOM SEG"


def test_corrupted_weights_are_a_clear_error_at_load(tmp_path: Path) -> None:
    shutil.copytree(BUNDLE, tmp_path / "ct-tissue", ignore=shutil.ignore_patterns("*.py"))
    weights = tmp_path / "ct-tissue" / "models" / "model.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"fail the sha256 check .* corrupted or replaced"):
        ModelCache(tmp_path, "cpu").get("ct-tissue")
    # a truncated file pinned in the manifest: torch refuses it, still at load, still named
    # (a flipped byte inside a tensor would load as other weights: only the sha256 catches it)
    weights.write_bytes(bytes(data[: len(data) // 2]))
    manifest = tmp_path / "ct-tissue" / "manifest.toml"
    text = manifest.read_text()
    manifest.write_text(text.replace(load_manifest(tmp_path, "ct-tissue")[0].runner.sha256,
                                     sha256_of(weights)))  # fmt: skip
    with pytest.raises(ModelError, match=r"model\.pt"):
        ModelCache(tmp_path, "cpu").get("ct-tissue")


def test_loads_and_runs_with_no_network(tmp_path: Path, testdata: Path) -> None:
    """In a network namespace with no interface up: MONAI and torch must not reach out."""
    probe = (
        "import socket, sys\n"
        "from pathlib import Path\n"
        "try:\n"
        "    socket.create_connection(('1.1.1.1', 443), timeout=2)\n"
        "    sys.exit('network reachable: the test proves nothing')\n"
        "except OSError:\n"
        "    pass\n"
        "from workers.inference.runners import ModelCache\n"
        "from workers.inference.pipeline import predict\n"
        f"model = ModelCache(Path({str(MODELS)!r}), 'cpu').get('ct-tissue')\n"
        f"paths = sorted(Path({str(testdata / HELD_OUT)!r}).iterdir())\n"
        "found = predict(model, tuple(paths))\n"
        "print('labels', sorted(set(found.maps.labels.ravel().tolist())))\n"
    )
    done = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
        timeout=300,
    )
    if "unshare failed" in done.stderr and not os.environ.get("CI"):
        pytest.skip(f"no network namespaces here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "labels [0, 1, 2, 3, 4]" in done.stdout


def _sr_volumes(sr_path: Path) -> dict[int, float]:
    """Referenced SEG segment number -> volume (mL), from the SR's TID 1500 groups."""
    sr = hd.sr.srread(sr_path)
    out = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        [number] = group.referenced_segment.referenced_segment_numbers
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        out[int(number)] = float(volume.value)
    return out


def _seg_voxels_and_voxel_ml(seg_path: Path) -> tuple[dict[int, int], float]:
    """Per segment, the voxels set in the SEG; the voxel volume from the SEG's own geometry:
    pixel spacing x the spacing of its planes along their normal (not SliceThickness)."""
    seg = dcmread(seg_path)
    frames = seg.pixel_array.reshape(int(seg.NumberOfFrames), -1)
    shared = seg.SharedFunctionalGroupsSequence[0]
    row, col = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    cosines = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(cosines[:3], cosines[3:])
    voxels: dict[int, int] = {}
    positions = set()
    for k, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        voxels[number] = voxels.get(number, 0) + int(frames[k].sum())
        position = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        positions.add(round(float(position @ normal), 3))
    gap = float(np.mean(np.diff(sorted(positions))))
    return voxels, row * col * gap / 1000


@pytest.mark.filterwarnings("ignore::UserWarning:highdicom.*")
def test_end_to_end_on_real_ct_with_a_confidence_map(tmp_path: Path, ct_dir: Path) -> None:
    """The tilted 54-slice CT through ``dicom-node serve``: C-STORE in, the embedded worker
    runs the shipped bundle, SEG + SR + Parametric Map go out to storescp."""
    archive = tmp_path / "archive"
    with storescp(archive) as archive_port:
        s = Scenario(tmp_path / "node", ct_dir, broker=None, port=free_port())
        s.route_to(
            "ct-tissue",
            MODELS,
            rule_extra="confidence_map = true\n",
            extra=destination("archive", "STORESCP", archive_port),
        )
        try:
            s.node.start()
            uid = s.send()
            job = s.wait_state(uid, JobState.DONE, 300)
        finally:
            s.close()
        received = {str(dcmread(p).SOPClassUID): p for p in archive.iterdir()}
    seg_path = received.pop("1.2.840.10008.5.1.4.1.1.66.4")
    pm_path = received.pop("1.2.840.10008.5.1.4.1.1.30")
    sr_path = received.pop("1.2.840.10008.5.1.4.1.1.88.33")
    assert received == {}
    assert job.result is not None and job.result["model"] == "ct-tissue"
    for path in (seg_path, pm_path, sr_path):
        assert dciodvfy_errors(path) == [], path.name
    assert dsrdump_ok(sr_path)[0] == 0
    # SR volumes = SEG voxels x voxel volume (both read from what the PACS received), within 1 %
    voxels, voxel_ml = _seg_voxels_and_voxel_ml(seg_path)
    sr_volumes = _sr_volumes(sr_path)
    assert set(sr_volumes) == {1, 2, 3, 4}
    for number, volume in sr_volumes.items():
        assert volume == pytest.approx(voxels.get(number, 0) * voxel_ml, rel=0.01), number
    assert voxels[3] > 0 and voxels[4] > 0  # bone and air: the phantom's skull and cranium
    # the confidence map: same frames as the SEG, values are probabilities of the chosen class
    pm = dcmread(pm_path)
    seg = dcmread(seg_path)
    assert (
        pm.StudyInstanceUID
        == seg.StudyInstanceUID
        == dcmread(next(ct_dir.glob("I*"))).StudyInstanceUID
    )
    assert int(pm.NumberOfFrames) == 54
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    values = pm.pixel_array * float(mapping.RealWorldValueSlope)
    assert values.max() <= 1.0 and values.min() >= 1.0 / 5 - 1e-3  # a softmax over 5 classes
    assert 0.5 < float(np.median(values)) <= 1.0
    print("e2e", job.result["series"][0]["timings_s"], job.result["results"]["timings_s"])
