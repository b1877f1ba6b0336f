"""One job's inference: series -> volume -> model grid -> forward -> labels on the source frames.

Writes ``<results_root>/<job_id>/attempt-<n>/`` atomically (a temp folder renamed into place):
``mask-<SeriesInstanceUID>.npz`` (labels per source frame, the frames' SOP Instance UIDs and frame
numbers, the affine) and ``summary.json`` (per-label voxels, volume and mean intensity, timings,
device, model version and weights digest). A re-run writes its own attempt folder; the job row
names the one that reached RESULTS_READY.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from dicom_node.errors import Transient
from dicom_node.jobs.stacks import GAP_TOLERANCE
from dicom_node.results import JobSummary, LabelMeasure, SeriesSummary
from workers.inference.grid import (
    ModelGrid,
    SourceMaps,
    plan_grid,
    source_spacing,
    to_model_grid,
)
from workers.inference.manifest import Manifest
from workers.inference.runners import LoadedModel, ModelCache, import_object
from workers.inference.volume import Volume, VolumeError, load_series
from workers.inference.windows import SourceMapper, windows

OOM_RETRIES = 3
MIN_ROI = 16


@dataclass(frozen=True, slots=True)
class SeriesInput:
    series_uid: str
    paths: tuple[Path, ...]
    stack: int | None = None  # the stack the rule chose; None = the largest that is one volume
    stack_frames: int | None = None  # its frame count when the rule chose it


@dataclass(frozen=True, slots=True)
class JobInput:
    job_id: str
    attempt: int
    model: str
    series: tuple[SeriesInput, ...]
    confidence: bool = False  # keep the per-voxel confidence (the rule's confidence_map)
    gap_tolerance: float = GAP_TOLERANCE  # the rule's: contiguous up to this x thickness
    interpolate_gaps_mm: float = 0.0  # the rule's: wider gaps up to this are interpolated


def normalise(x: torch.Tensor, manifest: Manifest) -> torch.Tensor:
    """The intensity normalisation of the manifest: a window to 0..1 (in place), a z-score,
    or none."""
    pre = manifest.preprocessing
    if pre.intensity == "window":
        assert pre.window is not None  # noqa: S101 - the manifest validator ensures it
        low, high = pre.window
        return x.clamp_(low, high).sub_(low).div_(high - low)  # in place: x is the model grid
    if pre.intensity == "zscore":
        std = x.std()
        return (x - x.mean()) / (std if float(std) > 0 else 1.0)
    return x


def _amp(model: LoadedModel) -> Any:
    """Autocast to float16 around the forward pass, on CUDA, when the manifest allows it."""
    if model.manifest.inference.amp and model.device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def _probabilities(logits: torch.Tensor, output: str) -> torch.Tensor:
    """The model's output as probabilities, in place: sigmoid, or softmax over the channels
    (the logits become the probabilities: no second copy of the grid)."""
    probs: torch.Tensor = logits.float()
    if output == "sigmoid":
        return probs.sigmoid_()
    probs -= probs.amax(dim=1, keepdim=True)
    probs.exp_()
    return probs.div_(probs.sum(dim=1, keepdim=True))


def _forward(
    model: LoadedModel, x: torch.Tensor, roi: tuple[int, int, int] | None, batch: int
) -> torch.Tensor:
    inf = model.manifest.inference
    with torch.inference_mode(), _amp(model):
        if roi is None:
            logits = model.module(x)
        else:
            logits = sliding_window_inference(
                x, roi, batch, model.module, overlap=inf.overlap, mode="gaussian"
            )
        return _probabilities(logits, inf.output)


T = TypeVar("T")


def with_retries(
    model: LoadedModel, x: torch.Tensor, run: Callable[[tuple[int, int, int] | None, int], T]
) -> T:
    """``run(window, batch)`` with the manifest's window and batch. CUDA out of memory: again
    with a smaller batch, then a smaller window, then give up as a Transient error (another
    worker, or a quieter GPU, may manage)."""
    inf = model.manifest.inference
    roi, batch = inf.roi_size, inf.sw_batch_size
    for attempt in range(OOM_RETRIES + 1):
        try:
            return run(roi, batch)
        except torch.OutOfMemoryError:
            if model.device.type == "cuda":
                torch.cuda.empty_cache()
            if attempt == OOM_RETRIES:
                break
            if batch > 1:
                batch //= 2
            else:
                shape = roi or tuple(x.shape[2:])
                roi = (
                    max(MIN_ROI, shape[0] // 2),
                    max(MIN_ROI, shape[1] // 2),
                    max(MIN_ROI, shape[2] // 2),
                )
    raise Transient(f"out of memory on {model.device} even with window {roi} and batch {batch}")


def infer(model: LoadedModel, x: torch.Tensor) -> torch.Tensor:
    """Probabilities [1, C, d, h, w] on the whole model grid (``with_retries``)."""
    return with_retries(model, x, lambda roi, batch: _forward(model, x, roi, batch))


def infer_onto_source(
    model: LoadedModel,
    x: torch.Tensor,
    grid: ModelGrid,
    roi: tuple[int, int, int] | None,
    batch: int,
    *,
    fractional: bool = False,
    confidence: bool = False,
) -> tuple[SourceMaps, dict[int, float]]:
    """The model's labels (and kept probabilities, and confidence) on the source frames, and
    each label's highest probability anywhere: what ``infer`` then ``to_source`` give, to the
    bit, but a slab of the model grid at a time (``windows``): memory follows the window."""
    manifest = model.manifest
    inf = manifest.inference
    channels = label_channels(manifest)
    sigmoid_label = manifest.labels[0].value if inf.output == "sigmoid" else None
    mapper = SourceMapper(
        grid,
        sigmoid_label=sigmoid_label,
        keep_channels=tuple(
            channels[lb.value] for lb in sorted(manifest.labels, key=lambda x: x.value)
        )
        if fractional
        else (),
        confidence=confidence,
    )

    def predict_window(data: torch.Tensor) -> torch.Tensor:
        with _amp(model):
            return model.module(data)  # type: ignore[no-any-return]

    highest = dict.fromkeys(channels, float("-inf"))
    with torch.inference_mode():
        slabs = (
            iter([(0, predict_window(x))])
            if roi is None
            else windows(predict_window, x, roi, batch, inf.overlap)
        )
        for start, planes in slabs:
            probs = _probabilities(planes, inf.output)
            for value, c in channels.items():
                highest[value] = max(highest[value], float(probs[0, c].max()))
            mapper.feed(start, probs[0])
        return mapper.finish(), highest


def label_channels(manifest: Manifest) -> dict[int, int]:
    """Probability channel of each label value: the value itself under softmax (0 is the
    background), the one channel under sigmoid."""
    if manifest.inference.output == "sigmoid":
        return {label.value: 0 for label in manifest.labels}
    return {label.value: label.value for label in manifest.labels}


def measure(
    volume: Volume,
    labels: np.ndarray,
    manifest: Manifest,
    max_probability: dict[int, float] | None = None,
) -> tuple[LabelMeasure, ...]:
    """Per label: voxels, volume (mL), mean and SD of the source intensity (HU for CT), and the
    highest probability the model gave the label anywhere (for findings).

    The volume is the sum over the source frames of the label's area on the frame times that
    frame's real extent along the slice normal (half the distance to each neighbour, the one
    gap for the outer frames), not voxels x one nominal spacing; mean and SD are weighted the
    same way. On evenly spaced slices the two agree."""
    extents = volume.slice_extents()
    area = volume.pixel_area_mm2
    out = []
    for label in manifest.labels:
        counts, mean, std = _weighted_stats(volume.array, labels, label.value, extents)
        voxels = int(counts.sum())
        out.append(
            LabelMeasure(
                value=label.value,
                name=label.name,
                voxels=voxels,
                volume_ml=float((counts * extents).sum()) * area / 1000.0,
                mean=mean,
                std=std,
                max_probability=(max_probability or {}).get(label.value),
            )
        )
    return tuple(out)


def _weighted_stats(
    values: np.ndarray, labels: np.ndarray, value: int, extents: np.ndarray
) -> tuple[np.ndarray, float | None, float | None]:
    """Per frame, the voxels labelled ``value``; the extent-weighted mean and SD of ``values``
    there. A frame at a time (two passes: the mean, then the spread about it), so no
    study-sized temporary is made whatever the series' length."""
    counts = np.zeros(len(labels), dtype=np.int64)
    sums = np.zeros(len(labels), dtype=np.float64)
    for k in range(len(labels)):
        inside = labels[k] == value
        counts[k] = int(np.count_nonzero(inside))
        if counts[k]:
            sums[k] = values[k][inside].sum(dtype=np.float64)
    weight = float((counts * extents).sum())
    if not weight:
        return counts, None, None
    mean = float((sums * extents).sum() / weight)
    spread = 0.0
    for j in map(int, np.flatnonzero(counts)):
        deviation = values[j][labels[j] == value].astype(np.float64) - mean
        spread += float(extents[j] * (deviation * deviation).sum())
    return counts, mean, float(np.sqrt(spread / weight))


def _fsync_write(path: Path, write: Callable[[Any], None]) -> None:
    with path.open("wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


@dataclass(frozen=True)
class Prediction:
    """One series through the model, mapped back onto its source frames."""

    volume: Volume
    grid: ModelGrid
    maps: SourceMaps
    max_probability: dict[int, float]  # per label value, anywhere in the volume
    timings_s: dict[str, float]


def predict(
    model: LoadedModel,
    paths: tuple[Path, ...],
    *,
    confidence: bool = False,
    gap_tolerance: float = GAP_TOLERANCE,
    interpolate_gaps_mm: float = 0.0,
    stack: int | None = None,
    stack_frames: int | None = None,
) -> Prediction:
    """Load, resample, normalise, infer and map back: what the node does with a series (its
    stack number ``stack``, else its largest stack that is one volume), also used by
    ``dicom-node models evaluate``."""
    manifest = model.manifest
    t0 = time.perf_counter()
    volume = load_series(
        paths,
        stack=stack,
        gap_tolerance=gap_tolerance,
        interpolate_gaps_mm=interpolate_gaps_mm,
    )
    if stack_frames is not None and len(volume.frames) != stack_frames:
        raise VolumeError(
            f"stack {stack} has {len(volume.frames)} frames, but {stack_frames} when the rule "
            "chose it: the series changed since; re-run the study"
        )
    t1 = time.perf_counter()
    grid = plan_grid(volume, manifest.preprocessing.target_spacing_mm)
    x = normalise(to_model_grid(volume, grid, model.device), manifest)
    t2 = time.perf_counter()
    fractional = manifest.inference.seg_type == "fractional"
    run = partial(infer_onto_source, model, x, grid, fractional=fractional, confidence=confidence)
    maps, max_probability = with_retries(model, x, run)
    del run
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t3 = time.perf_counter()
    del x
    if manifest.postprocessing.mask is not None:
        region = import_object(manifest.postprocessing.mask, "postprocessing mask")(volume.array)
        maps.labels[~np.asarray(region, dtype=bool)] = 0
    t4 = time.perf_counter()
    # the forward now includes mapping each slab onto the source frames as it comes
    timings = {"load": t1 - t0, "preprocess": t2 - t1, "forward": t3 - t2, "postprocess": t4 - t3}
    return Prediction(volume, grid, maps, max_probability, timings)


def run_series(
    model: LoadedModel, series: SeriesInput, out_dir: Path, job: JobInput
) -> SeriesSummary:
    """Predict one series and save its mask; the series' summary with its measurements."""
    manifest = model.manifest
    found = predict(
        model,
        series.paths,
        confidence=job.confidence,
        gap_tolerance=job.gap_tolerance,
        interpolate_gaps_mm=job.interpolate_gaps_mm,
        stack=series.stack,
        stack_frames=series.stack_frames,
    )
    volume, grid, (labels, kept, sure) = found.volume, found.grid, found.maps
    mask = out_dir / f"mask-{series.series_uid}.npz"
    arrays: dict[str, np.ndarray] = {
        "labels": labels,
        "affine": volume.affine,
        "sop_instance_uids": np.array([ref.sop_instance_uid for ref in volume.frames]),
        "frame_numbers": np.array([ref.frame_number or 0 for ref in volume.frames]),
        "origins": volume.origins if volume.origins is not None else np.zeros((0, 3)),
        "extents_mm": volume.slice_extents(),
    }
    if kept is not None:
        arrays["probabilities"] = kept
    if sure is not None:
        arrays["confidence"] = sure
    _fsync_write(mask, lambda f: np.savez_compressed(f, **arrays))  # type: ignore[arg-type]
    return SeriesSummary(
        series_uid=series.series_uid,
        mask=mask.name,
        frames=len(volume.frames),
        labels=measure(volume, labels, manifest, found.max_probability),
        timings_s=found.timings_s,
        source_shape=tuple(grid.source_shape),
        model_shape=tuple(grid.shape),
        source_spacing_mm=tuple(source_spacing(volume)),
        model_spacing_mm=tuple(grid.spacing_mm),
        tilt_deg=volume.tilt_deg,
        uniform=volume.uniform,
        spacing=volume.spacing,
        stacks=tuple(volume.stacks),
        notes=tuple(volume.notes),
    )


def run(job: JobInput, cache: ModelCache, results_root: Path) -> JobSummary:
    """Run the job's model on each chosen series; returns the summary stored on the job row."""
    model = cache.get(job.model)
    job_dir = results_root / job.job_id
    final = job_dir / f"attempt-{job.attempt}"
    temp = job_dir / f".attempt-{job.attempt}.tmp"
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(parents=True)
    series = [run_series(model, s, temp, job) for s in job.series]
    summary = JobSummary(
        model=model.manifest.name,
        version=model.manifest.version,
        weights_sha256=model.sha256,
        device=str(model.device),
        attempt=job.attempt,
        path=str(final),
        series=tuple(series),
        confidence_map=job.confidence,
    )
    text = json.dumps(summary.to_json(), indent=1)
    _fsync_write(temp / "summary.json", lambda f: f.write(text.encode()))
    shutil.rmtree(final, ignore_errors=True)
    temp.rename(final)
    return summary
