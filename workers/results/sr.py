"""A TID 1500 Measurement Report on the SEG: one volumetric group per segment.

Each group references its SEG segment and the source series, and carries the volume (mL), the
mean and SD of the intensity inside it (HU for CT), and the manifest's findings (Present/Absent
with the model's highest probability). The observer is the algorithm (a device); the report is
UNVERIFIED. One key source image is referenced in the Image Library: OHIF needs one, and each
costs time (PITFALLS 20). ComprehensiveSR (88.33) by default; Comprehensive3DSR per profile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from datetime import datetime

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from dicom_node.results import LabelMeasure
from workers.inference.manifest import Finding, Label, Manifest
from workers.results.provenance import (
    MANUFACTURER,
    SOFTWARE,
    concept,
    content_digest,
    contributing_equipment,
    derived_uid,
    device_observer,
    series_description,
    stamp,
)
from workers.results.seg import ResultError, building, ordered_labels

SR_SERIES_NUMBER = 9002
MILLILITER = hd.sr.CodedConcept("mL", "UCUM", "milliliter")
PROCEDURES = {
    "CT": hd.sr.CodedConcept.from_code(codes.SCT.ComputedTomography),
    "MR": hd.sr.CodedConcept("113091000", "SCT", "Magnetic resonance imaging"),
}
IMAGING = hd.sr.CodedConcept.from_code(codes.SCT.Imaging)
# what "intensity" means per modality, and its unit
INTENSITY = {
    "CT": (codes.DCM.AttenuationCoefficient, codes.UCUM.HounsfieldUnit),
    "MR": (codes.DCM.MRSignalIntensity, codes.UCUM.NoUnits),
}


def _measurements(label_summary: LabelMeasure, modality: str) -> list[hd.sr.Measurement]:
    out = [
        hd.sr.Measurement(
            name=codes.SCT.Volume, value=round(label_summary.volume_ml, 3), unit=MILLILITER
        )
    ]
    if label_summary.voxels and modality in INTENSITY:
        name, unit = INTENSITY[modality]
        for derivation, value in (
            (codes.SCT.Mean, label_summary.mean),
            (codes.SCT.StandardDeviation, label_summary.std),
        ):
            out.append(
                hd.sr.Measurement(
                    name=name, value=round(value or 0.0, 3), unit=unit, derivation=derivation
                )
            )
    return out


def finding_present(finding: Finding, label_summary: LabelMeasure) -> bool:
    """Present when the label has voxels, and volume and highest probability reach the finding's
    thresholds."""
    probability = label_summary.max_probability or 0.0
    return bool(
        label_summary.voxels
        and label_summary.volume_ml >= finding.min_volume_ml
        and probability >= finding.min_probability
    )


def _findings(
    manifest: Manifest, label: Label, label_summary: LabelMeasure
) -> tuple[list[hd.sr.QualitativeEvaluation], list[hd.sr.Measurement]]:
    evaluations, probabilities = [], []
    for finding in manifest.findings:
        if finding.label != label.value:
            continue
        present = finding_present(finding, label_summary)
        evaluations.append(
            hd.sr.QualitativeEvaluation(
                name=concept(finding.name), value=codes.SCT.Present if present else codes.SCT.Absent
            )
        )
        if label_summary.max_probability is not None:
            probabilities.append(
                hd.sr.Measurement(
                    name=codes.DCM.Probability,
                    value=round(label_summary.max_probability, 4),
                    unit=codes.UCUM.NoUnits,
                    derivation=codes.SCT.Maximum,
                )
            )
    return evaluations, probabilities


def _multiframe(ds: Dataset) -> bool:
    return int(getattr(ds, "NumberOfFrames", 1) or 1) > 1


def build_sr(
    seg: Dataset,
    key_image: Dataset,
    labels_summary: Sequence[LabelMeasure],
    manifest: Manifest,
    *,
    weights_sha256: str,
    at: datetime,
    sr_class: str = "comprehensive",
    previous: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR:
    """The report on ``seg`` (built by ``workers.results.seg``); ``labels_summary`` is the
    pipeline's per-label measurement list for the SEG's series."""
    modality = str(getattr(key_image, "Modality", ""))
    by_value = {item.value: item for item in labels_summary}
    source_series = hd.sr.SourceSeriesForSegmentation(str(key_image.SeriesInstanceUID))
    algorithm = hd.sr.AlgorithmIdentification(name=manifest.name, version=manifest.version)
    groups = []
    for number, label in enumerate(ordered_labels(manifest), start=1):
        summary = by_value.get(label.value)
        if summary is None:
            raise ResultError(f"no measurements for label {label.value} ({label.name})")
        measurements = (
            _measurements(summary, modality) if "measurements" in manifest.outputs else []
        )
        evaluations, probabilities = (
            _findings(manifest, label, summary) if "findings" in manifest.outputs else ([], [])
        )
        groups.append(
            hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=derived_uid("tracking", manifest, [seg.SOPInstanceUID], str(number)),
                    identifier=f"{label.name} (segment {number})"[:64],
                ),
                referenced_segment=hd.sr.ReferencedSegment(
                    sop_class_uid=seg.SOPClassUID,
                    sop_instance_uid=seg.SOPInstanceUID,
                    segment_number=number,
                    source_series=source_series,
                ),
                finding_type=concept(label.type),
                finding_category=concept(label.category),
                algorithm_id=algorithm,
                measurements=measurements + probabilities,
                qualitative_evaluations=evaluations or None,
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(manifest, weights_sha256)
        ),
        procedure_reported=PROCEDURES.get(modality, IMAGING),
        imaging_measurements=groups,
        title=codes.cid7021.ImagingMeasurementReport,
        # highdicom's Image Library entry reads single-frame geometry; a multi-frame source is
        # still referenced in the evidence
        referenced_images=None if _multiframe(key_image) else [key_image],
    )
    said = json.dumps([asdict(m) for m in labels_summary], sort_keys=True)
    variant = (sr_class, str(seg.SOPInstanceUID), content_digest(said, weights_sha256))
    sources = [str(seg.SOPInstanceUID)]
    sop_instance_uid = derived_uid("sr", manifest, sources, *variant)
    # the documents this one replaces: never itself (a re-run that said the same again is the
    # same document, with the same UID)
    replaced = [p for p in previous if str(p.SOPInstanceUID) != sop_instance_uid]
    cls = hd.sr.Comprehensive3DSR if sr_class == "comprehensive3d" else hd.sr.ComprehensiveSR
    with building("SR"):
        sr = cls(
            evidence=[seg, key_image],
            content=report,
            series_instance_uid=derived_uid("sr-series", manifest, sources, *variant),
            series_number=SR_SERIES_NUMBER,
            sop_instance_uid=sop_instance_uid,
            instance_number=1,
            manufacturer=MANUFACTURER,
            is_complete=True,
            is_final=False,
            is_verified=False,  # VerificationFlag UNVERIFIED: nobody has read it yet
            previous_versions=replaced or None,
            series_description=series_description("SR", manifest),
            manufacturer_model_name=manifest.name[:64],
            software_versions=SOFTWARE,
            contributing_equipment=[contributing_equipment(manifest, weights_sha256, at)],
        )
    stamp(sr, at)
    return sr
