"""``models evaluate`` (``workers.evaluate``): the confusion counts and their metrics on arrays
with a known answer, and a whole evaluation of a tiny real torch model (a 300.5 HU threshold)
on real CT slices against a reference SEG built from an independent threshold of the same
pixels: Dice 1, no volume difference, and what cannot be evaluated named."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from tests.models import build_model, expected_masks
from workers.evaluate import (
    Counts,
    EvaluationError,
    evaluate,
    find_cases,
    find_references,
    table,
    teacher,
    write_report,
)
from workers.inference.runners import LoadedModel, ModelCache
from workers.results.build import write_object
from workers.results.seg import Mask, build_seg

STRAIGHT = "dcm_qa_ct/In/Philips/S21570/S2010"


def test_counts_give_dice_sensitivity_specificity_and_volumes() -> None:
    pred = np.array([[[1, 1, 0, 0]], [[1, 0, 0, 0]]], dtype=bool)  # 2 slices of 1x4
    ref = np.array([[[1, 0, 1, 0]], [[1, 0, 0, 0]]], dtype=bool)
    counts = Counts()
    counts.add(pred, ref, slice_ml=np.array([0.5, 2.0]))
    m = counts.metrics()
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 4)
    assert m["dice"] == round(4 / 6, 4)
    assert m["sensitivity"] == round(2 / 3, 4) and m["specificity"] == 0.8
    assert (m["predicted_ml"], m["reference_ml"]) == (3.0, 3.0)  # 2 x 0.5 + 1 x 2.0, each
    assert (m["volume_difference_ml"], m["volume_difference_pct"]) == (0.0, 0.0)
    empty = Counts().metrics()
    assert empty["dice"] is None and empty["volume_difference_pct"] is None


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    root = tmp_path_factory.mktemp("models")
    build_model(root, "bone", "torchscript")
    return ModelCache(root, "cpu").get("bone")


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory, testdata: Path) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    slices = [p for p in (testdata / STRAIGHT).iterdir() if p.name != "DIRFILE"]
    slices.sort(key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber))
    for path in slices[:10]:  # 10 neighbouring slices
        shutil.copy(path, folder / path.name)
    (folder / "notes.txt").write_text("not DICOM: passed over")
    return folder


def reference_seg(model: LoadedModel, files: list[Path], folder: Path) -> Path:
    masks = expected_masks(files)
    sources = [dcmread(p) for p in files]
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    mask = Mask(np.stack([masks[u] for u in uids]), uids, (0,) * len(uids))
    at = datetime(2026, 1, 1, tzinfo=UTC)
    seg = build_seg(sources, mask, model.manifest, weights_sha256="0" * 64, at=at)
    return write_object(seg, folder, "seg")


def test_the_threshold_model_agrees_exactly_with_a_threshold_reference(
    model: LoadedModel, cases: Path, tmp_path: Path
) -> None:
    found = find_cases(cases)
    ((series_uid, files),) = found.items()
    reference_seg(model, files, tmp_path / "refs")
    references = find_references(tmp_path / "refs")
    assert list(references) == [series_uid]
    report = evaluate(model, found, references)
    bone = report["labels"]["bone"]
    assert bone["dice"] == 1.0 and bone["fp"] == 0 and bone["fn"] == 0
    assert bone["predicted_ml"] == bone["reference_ml"] > 0
    assert report["cases"][0]["frames"] == len(files)
    assert report["reference"] == "DICOM SEG" and report["skipped"] == []
    text = table(report)
    assert text.splitlines()[0] == "bone 1.0.0 vs DICOM SEG: 1 case(s), 0 skipped"
    assert text.splitlines()[2].split()[:2] == ["bone", "1.0000"]
    json_path, png_path = write_report(report, tmp_path / "out")
    assert json.loads(json_path.read_text())["labels"]["bone"]["dice"] == 1.0
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_case_without_a_reference_is_skipped_and_none_at_all_is_an_error(
    model: LoadedModel, cases: Path
) -> None:
    found = find_cases(cases)
    with pytest.raises(EvaluationError, match="no case had a reference SEG"):
        evaluate(model, found, {})


def test_what_cannot_be_evaluated_says_why(model: LoadedModel, tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="cases folder not found"):
        find_cases(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(EvaluationError, match="no DICOM image series under"):
        find_cases(tmp_path / "empty")
    with pytest.raises(EvaluationError, match="reference folder not found"):
        find_references(tmp_path / "nowhere")
    with pytest.raises(EvaluationError, match="names no classical labeler"):
        teacher(model.manifest)
