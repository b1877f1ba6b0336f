"""``dicom-node models evaluate``: a model on a site's own cases, before go-live.

Each image series under ``--cases`` runs through the model exactly as a job would (grid,
window, mapping back onto every source frame). The reference is a DICOM SEG from
``--reference`` that references that series, read with highdicom, its segments matched to the
model's labels by segmented property type (then by label name); without one, the model's
classical labeler (``teacher`` in its manifest). Per label, pooled over the cases and per case:
Dice, voxel-wise sensitivity and specificity, and the volume difference.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.errors import InvalidDicomError
from pydicom.uid import SegmentationStorage

from dicom_node.errors import Permanent
from workers.inference.grid import source_spacing
from workers.inference.manifest import Manifest
from workers.inference.pipeline import predict
from workers.inference.runners import LoadedModel, import_object
from workers.inference.volume import Volume

NOT_IMAGES = {"SEG", "SR", "PR", "KO", "RTSTRUCT", "RTPLAN", "DOC"}


class EvaluationError(Permanent):
    """The evaluation cannot run as asked; the message says why."""


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0
    predicted_ml: float = 0.0
    reference_ml: float = 0.0

    def add(self, pred: np.ndarray, ref: np.ndarray, slice_ml: np.ndarray) -> None:
        """``slice_ml``: one voxel's volume on each slice (area x the slice's real extent along
        the normal, as ``pipeline.measure`` defines volume)."""
        tp = int(np.count_nonzero(pred & ref))
        p, r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
        self.tp += tp
        self.fp += p - tp
        self.fn += r - tp
        self.tn += pred.size - p - r + tp
        self.predicted_ml += float((pred.reshape(len(pred), -1).sum(axis=1) * slice_ml).sum())
        self.reference_ml += float((ref.reshape(len(ref), -1).sum(axis=1) * slice_ml).sum())

    def metrics(self) -> dict[str, float | int | None]:
        """Dice, sensitivity, specificity and the volumes, rounded (``None`` where undefined)."""

        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        diff = self.predicted_ml - self.reference_ml
        return {
            "dice": ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn),
            "sensitivity": ratio(self.tp, self.tp + self.fn),
            "specificity": ratio(self.tn, self.tn + self.fp),
            "predicted_ml": round(self.predicted_ml, 3),
            "reference_ml": round(self.reference_ml, 3),
            "volume_difference_ml": round(diff, 3),
            "volume_difference_pct": (
                round(100 * diff / self.reference_ml, 2) if self.reference_ml else None
            ),
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "tn": self.tn,
        }


def _headers(root: Path) -> Iterable[tuple[Path, Any]]:
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        try:
            yield path, dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, AttributeError):
            continue


def find_cases(root: Path) -> dict[str, list[Path]]:
    """Image series under ``root``: SeriesInstanceUID -> files."""
    if not root.is_dir():
        raise EvaluationError(f"cases folder not found: {root}")
    cases: dict[str, list[Path]] = defaultdict(list)
    for path, ds in _headers(root):
        if "Rows" in ds and str(ds.get("Modality", "")) not in NOT_IMAGES:
            cases[str(ds.SeriesInstanceUID)].append(path)
    if not cases:
        raise EvaluationError(f"no DICOM image series under {root}")
    return dict(cases)


def find_references(root: Path) -> dict[str, Path]:
    """Reference SEGs under ``root``: referenced SeriesInstanceUID -> SEG file."""
    if not root.is_dir():
        raise EvaluationError(f"reference folder not found: {root}")
    found: dict[str, Path] = {}
    for path, ds in _headers(root):
        if ds.get("SOPClassUID") != SegmentationStorage:
            continue
        for item in ds.get("ReferencedSeriesSequence", []):
            found[str(item.SeriesInstanceUID)] = path
    return found


def _matching_segments(seg: Any, manifest: Manifest) -> dict[int, int]:
    """SEG segment number -> model label value, by property type code, then by label name."""
    by_code = {(lb.type.value, lb.type.scheme): lb.value for lb in manifest.labels}
    by_name = {lb.name.lower(): lb.value for lb in manifest.labels}
    out: dict[int, int] = {}
    for item in seg.SegmentSequence:
        code = item.SegmentedPropertyTypeCodeSequence[0]
        value = by_code.get((str(code.CodeValue), str(code.CodingSchemeDesignator)))
        if value is None:
            value = by_name.get(str(item.SegmentLabel).lower())
        if value is not None:
            out[int(item.SegmentNumber)] = value
    return out


def reference_from_seg(path: Path, volume: Volume, manifest: Manifest) -> np.ndarray:
    """The reference SEG's segments as model label values on the volume's frames."""
    try:
        seg = hd.seg.segread(path)
    except (InvalidDicomError, ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        raise EvaluationError(f"reference {path.name} is not a readable SEG: {exc}") from None
    numbers = _matching_segments(seg, manifest)
    if not numbers:
        raise EvaluationError(
            f"reference {path.name}: none of its segments matches a label of "
            f"{manifest.name} (by segmented property type or label)"
        )
    segments = sorted(numbers)
    frames = volume.frames
    try:
        if frames[0].frame_number:
            pixels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=frames[0].sop_instance_uid,
                source_frame_numbers=[f.frame_number or 0 for f in frames],
                segment_numbers=segments,
                assert_missing_frames_are_empty=True,
            )
        else:
            pixels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=[f.sop_instance_uid for f in frames],
                segment_numbers=segments,
                assert_missing_frames_are_empty=True,
            )
    except (ValueError, KeyError, RuntimeError) as exc:
        raise EvaluationError(f"reference {path.name} does not fit the series: {exc}") from None
    threshold = 0.5 if str(seg.SegmentationType) == "FRACTIONAL" else 0
    labels = np.zeros(volume.array.shape, dtype=np.uint8)
    for k, number in enumerate(segments):
        labels[pixels[..., k] > threshold] = numbers[number]
    return labels


def teacher(manifest: Manifest) -> Callable[[np.ndarray, tuple[float, float, float]], np.ndarray]:
    """The model's classical labeler (``teacher`` in its manifest), the reference when no SEG is
    given."""
    if manifest.teacher is None:
        raise EvaluationError(
            f"model {manifest.name!r} names no classical labeler (teacher): give --reference"
        )
    return import_object(manifest.teacher, "teacher")  # type: ignore[no-any-return]


def evaluate(
    model: LoadedModel,
    cases: dict[str, list[Path]],
    references: dict[str, Path] | None,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run ``model`` on every case and compare with its reference: per case and pooled per label."""
    manifest = model.manifest
    labeler = teacher(manifest) if references is None else None
    pooled = {lb.value: Counts() for lb in manifest.labels}
    per_case, skipped = [], []
    for series_uid, paths in sorted(cases.items()):
        if references is not None and series_uid not in references:
            skipped.append({"series_uid": series_uid, "reason": "no reference SEG"})
            progress(series_uid)
            continue
        t0 = time.perf_counter()
        found = predict(model, tuple(sorted(paths)))
        seconds = time.perf_counter() - t0
        volume = found.volume
        if references is not None:
            truth = reference_from_seg(references[series_uid], volume, manifest)
        else:
            assert labeler is not None  # noqa: S101 - set above when there is no reference
            truth = labeler(volume.array, source_spacing(volume))
        slice_ml = volume.slice_extents() * volume.pixel_area_mm2 / 1000.0
        case: dict[str, Any] = {
            "series_uid": series_uid,
            "frames": len(volume.frames),
            "inference_s": round(seconds, 2),
            "labels": {},
        }
        for label in manifest.labels:
            counts = Counts()
            pred, ref = found.maps.labels == label.value, truth == label.value
            counts.add(pred, ref, slice_ml)
            pooled[label.value].add(pred, ref, slice_ml)
            case["labels"][label.name] = counts.metrics()
        per_case.append(case)
        progress(series_uid)
    if not per_case:
        raise EvaluationError("no case had a reference SEG: nothing was evaluated")
    return {
        "model": manifest.name,
        "version": manifest.version,
        "weights_sha256": model.sha256,
        "device": str(model.device),
        "reference": "DICOM SEG" if references is not None else f"teacher {manifest.teacher}",
        "labels": {lb.name: pooled[lb.value].metrics() for lb in manifest.labels},
        "cases": per_case,
        "skipped": skipped,
    }


def table(report: dict[str, Any]) -> str:
    """The report as the text table ``models evaluate`` prints."""

    def fmt(value: Any, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    lines = [
        f"{report['model']} {report['version']} vs {report['reference']}: "
        f"{len(report['cases'])} case(s), {len(report['skipped'])} skipped",
        f"{'LABEL':<18} {'DICE':>7} {'SENS':>7} {'SPEC':>7} {'PRED mL':>10} {'REF mL':>10} "
        f"{'DIFF %':>8}",
    ]
    for name, m in report["labels"].items():
        lines.append(
            f"{name:<18} {fmt(m['dice'], '.4f'):>7} {fmt(m['sensitivity'], '.4f'):>7} "
            f"{fmt(m['specificity'], '.4f'):>7} {m['predicted_ml']:>10.1f} "
            f"{m['reference_ml']:>10.1f} {fmt(m['volume_difference_pct'], '+.1f'):>8}"
        )
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Per-label Dice / sensitivity / specificity bars, and predicted vs reference volume."""
    import matplotlib  # noqa: PLC0415 - only the evaluate command draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    names = list(report["labels"])
    fig, (bars, scatter) = plt.subplots(1, 2, figsize=(11, 4.2))
    width = 0.26
    for k, metric in enumerate(("dice", "sensitivity", "specificity")):
        values = [report["labels"][n][metric] or 0.0 for n in names]
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars.bar(xs, values, width, label=metric)
    bars.set_xticks(range(len(names)), names, rotation=15)
    bars.set_ylim(0, 1.05)
    bars.set_title("per label, pooled over cases")
    bars.legend(loc="lower right", fontsize=8)
    bars.grid(axis="y", alpha=0.3)
    top = 0.0
    for name in names:
        ref = [c["labels"][name]["reference_ml"] for c in report["cases"]]
        pred = [c["labels"][name]["predicted_ml"] for c in report["cases"]]
        scatter.scatter(ref, pred, label=name, s=30)
        top = max([top, *ref, *pred])
    scatter.plot([0, top * 1.05], [0, top * 1.05], color="grey", lw=0.8, ls="--")
    scatter.set_xlabel("reference volume (mL)")
    scatter.set_ylabel("predicted volume (mL)")
    scatter.set_title("volume per case")
    scatter.legend(fontsize=8)
    fig.suptitle(f"{report['model']} {report['version']} vs {report['reference']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """Write the report as ``evaluation.json`` and ``evaluation.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    json_path, png_path = out / "evaluation.json", out / "evaluation.png"
    json_path.write_text(json.dumps(report, indent=1) + "\n")
    plot(report, png_path)
    return json_path, png_path
