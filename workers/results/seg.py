"""A DICOM Segmentation from a job's mask: one segment per manifest label, on the source frames.

The mask from ``workers.inference.pipeline`` has one label image per source frame, with the
frame's SOP Instance UID and frame number; the SEG references exactly those instances (and
frames), so it lands where the scanner's images are, tilted, sagittal or multi-frame. BINARY by
default; FRACTIONAL when the manifest asks (OHIF and Slicer do not show it: PITFALLS 19).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset

from workers.inference.manifest import Manifest
from workers.results.errors import ResultError
from workers.results.provenance import (
    MANUFACTURER,
    SOFTWARE,
    algorithm_identification,
    concept,
    content_digest,
    contributing_equipment,
    derived_uid,
    series_description,
    stamp,
)
from workers.results.regular import frame_headers, regularise

SEG_SERIES_NUMBER = 9001
__all__ = ["Mask", "ResultError", "build_seg"]


@dataclass(frozen=True, slots=True)
class Mask:
    """A pipeline mask: labels per source frame, in the order of ``sop_instance_uids``."""

    labels: np.ndarray  # uint8 [frames, rows, columns], the manifest's label values
    sop_instance_uids: tuple[str, ...]
    frame_numbers: tuple[int, ...]  # 1-based for multi-frame sources, 0 for single-frame
    probabilities: np.ndarray | None = None  # uint8 [labels, frames, rows, columns], 255 = 1.0
    confidence: np.ndarray | None = None  # uint8 [frames, rows, columns]: max probability


@contextmanager
def quiet_person_names() -> Iterator[None]:
    """highdicom warns about the source's PatientName, quoting it: PHI in the logs. The source is
    copied as received (PITFALLS 15), so the warning helps nobody."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        yield


@contextmanager
def building(what: str) -> Iterator[None]:
    """Around a highdicom constructor: its PHI-quoting warning silenced, and its ValueError or
    TypeError (the standard's constraints) turned into a ``ResultError`` naming the object."""
    try:
        with quiet_person_names():
            yield
    except (ValueError, TypeError) as exc:
        raise ResultError(f"cannot build {what}: {exc}") from exc


def segment_descriptions(manifest: Manifest) -> list[hd.seg.SegmentDescription]:
    """One segment description per manifest label, in segment order."""
    algorithm = algorithm_identification(manifest)
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label.name,
            segmented_property_category=concept(label.category),
            segmented_property_type=concept(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label.color),
        )
        for number, label in enumerate(ordered_labels(manifest), start=1)
    ]


def ordered_labels(manifest: Manifest) -> list:  # type: ignore[type-arg]
    """Labels in segment-number order (segment numbers run 1..n)."""
    return sorted(manifest.labels, key=lambda x: x.value)


def frame_order(mask: Mask, sources: Sequence[Dataset]) -> np.ndarray:
    """Index into the mask for each source frame, in the order highdicom expects: the sources'
    order for single-frame instances, frame-number order for one multi-frame instance."""
    if len(sources) == 1 and int(getattr(sources[0], "NumberOfFrames", 1) or 1) > 1:
        frames = int(sources[0].NumberOfFrames)
        if sorted(mask.frame_numbers) != list(range(1, frames + 1)):
            raise ResultError(f"the mask covers {len(mask.frame_numbers)} of {frames} frames")
        return np.argsort(np.asarray(mask.frame_numbers))
    by_uid = {uid: k for k, uid in enumerate(mask.sop_instance_uids)}
    if len(by_uid) != len(mask.sop_instance_uids) or len(sources) != len(by_uid):
        raise ResultError(
            f"{len(mask.sop_instance_uids)} mask frames for {len(sources)} source instances; "
            "a series mixing multi-frame instances is not supported"
        )
    return np.array([by_uid[str(ds.SOPInstanceUID)] for ds in sources])


def build_seg(
    sources: Sequence[Dataset],
    mask: Mask,
    manifest: Manifest,
    *,
    weights_sha256: str,
    at: datetime,
    omit_empty_frames: bool = False,
    workers: int = 0,
    geometry: str = "source",
) -> hd.seg.Segmentation:
    """``sources``: the single-frame instances of one series, or its one multi-frame instance.
    ``geometry``: "source" puts each frame on its source frame; "regular" puts the frames on a
    rectangular grid when the source's is not (``workers.results.regular``)."""
    order = frame_order(mask, sources)
    labels = ordered_labels(manifest)
    fractional = manifest.inference.seg_type == "fractional"
    if fractional:
        if mask.probabilities is None:
            raise ResultError("FRACTIONAL SEG asked for, but the mask kept no probabilities")
        pixels: np.ndarray = np.moveaxis(mask.probabilities[:, order], 0, -1).astype(np.float32)
        pixels /= 255.0
    else:
        # one pass through a lookup table (label value -> segment number); none at all when the
        # values already are the numbers and the frames already in order (the common case)
        lut = np.zeros(256, dtype=np.uint8)
        for number, label in enumerate(labels, start=1):
            lut[label.value] = number
        identity = all(label.value == n for n, label in enumerate(labels, start=1))
        in_order = bool(np.array_equal(order, np.arange(len(order))))
        pixels = mask.labels if in_order else mask.labels[order]
        if not identity:
            pixels = lut[pixels]
        elif int(pixels.max(initial=0)) > len(labels):
            pixels = lut[pixels]  # values the manifest does not name become background
    grid = regularise(pixels, frame_headers(sources)) if geometry == "regular" else None
    placed: dict[str, object] = {}
    if grid is not None:
        pixels = grid.pixels
        placed = {
            "plane_positions": grid.positions,
            "plane_orientation": grid.orientation,
            "pixel_measures": grid.measures,
        }
    source_uids = list(mask.sop_instance_uids)
    variant = (
        manifest.inference.seg_type,
        f"omit={omit_empty_frames}",
        *(["grid=regular"] if grid is not None else []),
        content_digest(np.ascontiguousarray(pixels).tobytes(), weights_sha256),
    )
    with building("SEG"):
        seg = hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=pixels,
            segmentation_type=(
                hd.seg.SegmentationTypeValues.FRACTIONAL
                if fractional
                else hd.seg.SegmentationTypeValues.BINARY
            ),
            segment_descriptions=segment_descriptions(manifest),
            series_instance_uid=derived_uid("seg-series", manifest, source_uids, *variant),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=derived_uid("seg", manifest, source_uids, *variant),
            instance_number=1,
            manufacturer=MANUFACTURER,
            manufacturer_model_name=manifest.name[:64],
            software_versions=SOFTWARE,  # the model's is in the algorithm identification
            device_serial_number="0",
            series_description=series_description("SEG", manifest),
            content_label="AI_SEG",
            content_description=(
                f"{manifest.name} {manifest.version}: not for diagnostic use"
                if manifest.not_for_diagnostic_use
                else f"{manifest.name} {manifest.version}"
            )[:64],
            content_creator_name=None,
            omit_empty_frames=omit_empty_frames,
            workers=workers,
            contributing_equipment=contributing_equipment(manifest, weights_sha256, at),
            **placed,  # type: ignore[arg-type]
        )
    if grid is not None:
        # highdicom keeps the source's measures when the pixel spacing matches, and with them a
        # slice spacing measured along the sheared stack; readers place frames by it (dcmqi)
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        measures.SliceThickness = measures.SpacingBetweenSlices = grid.measures[0].SliceThickness
    if "ContentCreatorName" not in seg:
        seg.ContentCreatorName = ""  # Type 2: a device made it, no person (dcmqi checks)
    stamp(seg, at)
    return seg
