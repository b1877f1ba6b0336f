"""A DICOM Segmentation from a job's mask: one segment per manifest label, on the source frames.

The mask from ``workers.inference.pipeline`` already has one label image per source frame, in
the order of its ``sop_instance_uids``; the SEG references exactly those instances (and frames),
so it lands where the scanner's images are, tilted or not. UIDs are derived from the input
instances plus the model name and version, so a re-run or a re-send is the same object to the
PACS (idempotent).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import UID

from dicom_node import __version__
from dicom_node.errors import Permanent
from workers.inference.manifest import Code, Manifest

MANUFACTURER = "dicom-node"
SEG_SERIES_NUMBER = 9001
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/dicom-node/dicom-node/results")


class ResultError(Permanent):
    """The result object cannot be built as the standard requires; the message says why."""


def derived_uid(kind: str, manifest: Manifest, source_uids: Sequence[str]) -> UID:
    """The same inputs and model give the same UID, for idempotent re-sends: a name-based
    UUID (RFC 9562 v5) in the 2.25 form. (pydicom's ``generate_uid(prefix=None)`` ignores its
    entropy sources and is random.)"""
    name = "\n".join([kind, manifest.name, manifest.version, *sorted(source_uids)])
    return UID(f"2.25.{uuid.uuid5(_NAMESPACE, name).int}")


def _concept(code: Code) -> hd.sr.CodedConcept:
    return hd.sr.CodedConcept(code.value, code.scheme, code.meaning)


def segment_descriptions(manifest: Manifest) -> list[hd.seg.SegmentDescription]:
    algorithm = hd.AlgorithmIdentificationSequence(
        name=manifest.name,
        version=manifest.version,
        family=_concept(manifest.family)
        if manifest.family
        else codes.cid7162.ArtificialIntelligence,
    )
    return [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label.name,
            segmented_property_category=_concept(label.category),
            segmented_property_type=_concept(label.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*label.color),
        )
        for number, label in enumerate(sorted(manifest.labels, key=lambda x: x.value), start=1)
    ]


def build_seg(
    sources: Sequence[Dataset],
    labels: np.ndarray,
    manifest: Manifest,
    *,
    omit_empty_frames: bool = True,
    workers: int = 0,
) -> hd.seg.Segmentation:
    """``labels`` is uint8 [frames, rows, columns] in the order of ``sources`` (single-frame
    instances of one series), with the manifest's label values."""
    if len(sources) != labels.shape[0]:
        raise ResultError(f"{labels.shape[0]} mask frames for {len(sources)} source instances")
    ordered = sorted(manifest.labels, key=lambda x: x.value)
    segments = np.zeros(labels.shape, dtype=np.uint8)
    for number, label in enumerate(ordered, start=1):
        segments[labels == label.value] = number  # segment numbers must run 1..n
    source_uids = [str(ds.SOPInstanceUID) for ds in sources]
    description = f"AI {manifest.name} {manifest.version}"[:64]
    try:
        with warnings.catch_warnings():
            # highdicom warns about the source's PatientName, quoting it: PHI in the logs. The
            # source is copied as received (PITFALLS 15), so the warning helps nobody.
            warnings.filterwarnings(
                "ignore", message=".*intended person name", category=UserWarning
            )
            return hd.seg.Segmentation(
                source_images=list(sources),
                pixel_array=segments,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=segment_descriptions(manifest),
                series_instance_uid=derived_uid("seg-series", manifest, source_uids),
                series_number=SEG_SERIES_NUMBER,
                sop_instance_uid=derived_uid("seg", manifest, source_uids),
                instance_number=1,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=manifest.name[:64],
                software_versions=f"dicom-node {__version__}",  # the model's is in the algorithm ID
                device_serial_number="0",
                series_description=description,
                content_label="AI_SEG",
                content_description=(
                    f"{manifest.name} {manifest.version}: not for diagnostic use"
                    if manifest.not_for_diagnostic_use
                    else f"{manifest.name} {manifest.version}"
                )[:64],
                omit_empty_frames=omit_empty_frames,
                workers=workers,
            )
    except (ValueError, TypeError) as exc:
        raise ResultError(f"cannot build SEG: {exc}") from None


def seg_from_result(
    job_dir: Path, mask_name: str, storage_paths: dict[str, Path], manifest: Manifest
) -> hd.seg.Segmentation:
    """Load a pipeline mask and its source instances (by SOP Instance UID) and build the SEG."""
    saved = np.load(job_dir / mask_name)
    uids = [str(u) for u in saved["sop_instance_uids"]]
    missing = [u for u in uids if u not in storage_paths]
    if missing:
        raise ResultError(f"source instance {missing[0]} is no longer stored")
    sources = [dcmread(storage_paths[u]) for u in uids]
    return build_seg(sources, saved["labels"], manifest)
