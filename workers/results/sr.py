"""A TID 1500 Measurement Report on the SEG: two measurement groups per segment.

- A volumetric group (TID 1411) references the SEG segment and the source series, and carries
  the volume (mL), the mean and SD of the intensity inside it (HU for CT), the manifest's
  findings (Present/Absent, with the model's highest probability) and the finding site. Slicer
  and dcmqi read these.
- A planar group (TID 1410) outlines the segment on its key image (``workers.results.regions``)
  as an SCOORD POLYLINE (SCOORD3D in a Comprehensive 3D SR), with the volume and the mean
  first: OHIF draws only planar groups, and shows their first lines (PITFALLS 30).

The key images are the Image Library; the evidence is the SEG and the whole source series. The
observer is the algorithm (a device); the report is UNVERIFIED. ComprehensiveSR (88.33) by
default; Comprehensive3DSR per profile.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, cast

import highdicom as hd
import numpy as np
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
from workers.results.regions import Region, in_patient, label_areas, region
from workers.results.seg import Mask, ResultError, building, ordered_labels

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
    """Volume first, then the mean and SD of the intensity (HU for CT). Mean and SD are named
    as OHIF and its cornerstone adapters name them (SCT Mean, Standard Deviation, in the
    modality's unit): OHIF shows a NUM's concept name and no derivation, so "Attenuation
    Coefficient" twice would not say which line is the mean."""
    out = [
        hd.sr.Measurement(
            name=codes.SCT.Volume, value=round(label_summary.volume_ml, 3), unit=MILLILITER
        )
    ]
    if label_summary.voxels and modality in INTENSITY:
        unit = INTENSITY[modality][1]
        for name, value in (
            (codes.SCT.Mean, label_summary.mean),
            (codes.SCT.StandardDeviation, label_summary.std),
        ):
            out.append(hd.sr.Measurement(name=name, value=round(value or 0.0, 3), unit=unit))
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


def finding_text(manifest: Manifest, label: Label, label_summary: LabelMeasure) -> list[str]:
    """Each of the label's findings as a sentence a radiologist reads in any SR view."""
    out = []
    for finding in manifest.findings:
        if finding.label != label.value:
            continue
        said = "present" if finding_present(finding, label_summary) else "absent"
        probability = label_summary.max_probability
        odds = f", highest probability {probability:.2f}" if probability is not None else ""
        out.append(
            f"{finding.name.meaning}: {said} ({label.name}, {label_summary.volume_ml:.1f} mL{odds})"
        )
    return out


def _multiframe(ds: Dataset) -> bool:
    return int(getattr(ds, "NumberOfFrames", 1) or 1) > 1


def _site_by_body_part() -> dict[str, hd.sr.CodedConcept]:
    """CID 4031 (common anatomic regions) and CID 4030 (CT, MR and PET anatomy imaged) by Body
    Part Examined's spelling of them (PS3.16 Annex L: the meaning in capitals, without spaces or
    "and")."""
    out = {}
    for cid, keyword in [(c, k) for c in (codes.cid4030, codes.cid4031) for k in c.dir()]:
        code = getattr(cid, keyword)
        words = [w for w in str(code.meaning).upper().split() if w != "AND"]
        out["".join(words)] = hd.sr.CodedConcept.from_code(code)
    return out


SITES = _site_by_body_part()


def finding_site(label: Label, source: Dataset) -> hd.sr.FindingSite | None:
    """Where the finding is: the manifest's site for the label, else the source's Anatomic
    Region Sequence, else its Body Part Examined as a CID 4030/4031 code; None when none
    says."""
    if label.site is not None:
        return hd.sr.FindingSite(concept(label.site))
    region = source.get("AnatomicRegionSequence")
    if region:
        item = region[0]
        return hd.sr.FindingSite(
            hd.sr.CodedConcept(
                str(item.CodeValue), str(item.CodingSchemeDesignator), str(item.CodeMeaning)
            )
        )
    body_part = str(source.get("BodyPartExamined", "") or "").upper().replace(" ", "")
    return hd.sr.FindingSite(SITES[body_part]) if body_part in SITES else None


def _drawn(
    outline: Region, source: Dataset, sr_class: str
) -> hd.sr.ImageRegion | hd.sr.ImageRegion3D:
    """The outline as OHIF draws it: SCOORD POLYLINE on the key image (88.33), or SCOORD3D
    POLYLINE in the frame of reference (88.34)."""
    if sr_class == "comprehensive3d":
        return hd.sr.ImageRegion3D(
            graphic_type=hd.sr.GraphicTypeValues3D.POLYLINE,
            graphic_data=in_patient(outline.points, source, outline.frame_number),
            frame_of_reference_uid=str(source.FrameOfReferenceUID),
        )
    return hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=outline.points.astype(np.float32),
        source_image=hd.sr.SourceImageForRegion(
            referenced_sop_class_uid=str(source.SOPClassUID),
            referenced_sop_instance_uid=str(source.SOPInstanceUID),
            referenced_frame_numbers=[outline.frame_number] if outline.frame_number else None,
        ),
    )


@dataclass(frozen=True)
class _Segment:
    """What one segment's two groups share."""

    number: int
    label: Label
    summary: LabelMeasure
    measurements: list[hd.sr.Measurement]
    evaluations: list[hd.sr.QualitativeEvaluation]
    probabilities: list[hd.sr.Measurement]
    site: hd.sr.FindingSite | None


def _segments(
    manifest: Manifest, labels_summary: Sequence[LabelMeasure], modality: str, source: Dataset
) -> list[_Segment]:
    by_value = {item.value: item for item in labels_summary}
    out = []
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
        out.append(
            _Segment(
                number,
                label,
                summary,
                measurements,
                evaluations,
                probabilities,
                finding_site(label, source),
            )
        )
    return out


def _tracking(manifest: Manifest, seg: Dataset, s: _Segment) -> hd.sr.TrackingIdentifier:
    """One finding, one tracking identifier and UID: a segment's volumetric and planar groups
    share them. OHIF merges groups by Tracking UID, and fails to load an SR holding a group it
    cannot draw on its own (OHIF 3.13.2: a volumetric group alone stops the viewport)."""
    return hd.sr.TrackingIdentifier(
        uid=derived_uid("tracking", manifest, [seg.SOPInstanceUID], str(s.number)),
        identifier=f"{s.label.name} (segment {s.number})"[:64],
    )


def _volumetric(
    s: _Segment, seg: Dataset, source_series: str, manifest: Manifest
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """TID 1411: the segment by reference, with every measurement (Slicer, dcmqi)."""
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(manifest, seg, s),
        referenced_segment=hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID,
            sop_instance_uid=seg.SOPInstanceUID,
            segment_number=s.number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series),
        ),
        finding_type=concept(s.label.type),
        finding_category=concept(s.label.category),
        algorithm_id=hd.sr.AlgorithmIdentification(name=manifest.name, version=manifest.version),
        finding_sites=[s.site] if s.site else None,
        measurements=s.measurements + s.probabilities,
        qualitative_evaluations=s.evaluations or None,
    )


def _planar(
    s: _Segment, seg: Dataset, where: Region, source: Dataset, manifest: Manifest, *, sr_class: str
) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """TID 1410 on the key image, for OHIF: the finding's outline. Its numbers are in the
    volumetric group of the same finding (the same Tracking UID), and OHIF, which merges the
    two, lists them once: volume first, then the mean intensity, then the finding site."""
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=_tracking(manifest, seg, s),
        referenced_region=_drawn(where, source, sr_class),
        finding_type=concept(s.label.type),
        finding_category=concept(s.label.category),
        algorithm_id=hd.sr.AlgorithmIdentification(name=manifest.name, version=manifest.version),
        finding_sites=[s.site] if s.site else None,
        qualitative_evaluations=s.evaluations or None,
    )


SOURCE = hd.sr.CodedConcept("260753009", "SCT", "Source")


def _frame_library(source: Dataset, frames: Sequence[int]) -> hd.sr.ContainerContentItem:
    """The Image Library for a multi-frame source: its key frames as IMAGE entries (OHIF finds
    the images a report draws on through the library), without the per-image descriptors
    highdicom reads from single-frame headers."""
    group = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibraryGroup, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    group.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.ImageContentItem(
                name=SOURCE,
                referenced_sop_class_uid=str(source.SOPClassUID),
                referenced_sop_instance_uid=str(source.SOPInstanceUID),
                referenced_frame_numbers=[frame],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
            for frame in frames
        ]
    )
    library = hd.sr.ContainerContentItem(
        name=codes.DCM.ImageLibrary, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    library.ContentSequence = hd.sr.ContentSequence([group])
    return library


QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def _summary(
    manifest: Manifest, segments: Sequence[_Segment], empty: Sequence[_Segment]
) -> hd.sr.ContainerContentItem | None:
    """TID 1500's Qualitative Evaluations, in words: every finding (present or absent, with
    the volume and the highest probability), and the segments the model found nothing of. The
    empty segments' coded findings (Absent) are here too: they get no measurement group, as
    there is nothing to draw and OHIF stops loading an SR on a group it cannot draw."""
    items: list[hd.sr.ContentItem] = []

    def text(value: str) -> None:
        items.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Finding,
                value=value[:1024],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )

    if "findings" in manifest.outputs:
        for s in segments:
            for line in finding_text(manifest, s.label, s.summary):
                text(line)
    for s in empty:
        text(f"{s.label.name} (segment {s.number}): not found, 0 mL")
        for evaluation in s.evaluations:
            items.extend(cast(list[hd.sr.ContentItem], evaluation))  # its CODE item
    if not items:
        return None
    container = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    container.ContentSequence = hd.sr.ContentSequence(items)
    return container


def build_sr(
    seg: Dataset,
    sources: Sequence[Dataset],
    mask: Mask,
    labels_summary: Sequence[LabelMeasure],
    manifest: Manifest,
    *,
    weights_sha256: str,
    at: datetime,
    sr_class: str = "comprehensive",
    previous: Sequence[Dataset] = (),
) -> hd.sr.ComprehensiveSR | hd.sr.Comprehensive3DSR:
    """The report on ``seg`` (built by ``workers.results.seg`` from ``sources`` and ``mask``);
    ``labels_summary`` is the pipeline's per-label measurement list for the SEG's series.

    Per segment with voxels: a volumetric group (TID 1411) referencing the segment, with the
    measurements, and a planar group (TID 1410) outlining it on its key image, one finding with
    one Tracking UID. Segments without voxels are listed as not found. The key images are the
    Image Library; the evidence is the whole source series and the SEG."""
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    first = sources[0]
    modality = str(getattr(first, "Modality", ""))
    groups: list[Any] = []
    drawn: list[Any] = []
    segments = _segments(manifest, labels_summary, modality, first)
    empty: list[_Segment] = []
    key_images: dict[str, Dataset] = {}
    key_frames: dict[int, None] = {}
    areas = label_areas(mask)
    for s in segments:
        where = region(mask, s.label.value, areas)
        if where is None:
            empty.append(s)
            continue
        source = by_uid[where.sop_instance_uid]
        key_images[where.sop_instance_uid] = source
        key_frames[where.frame_number] = None
        groups.append(_volumetric(s, seg, str(first.SeriesInstanceUID), manifest))
        drawn.append(_planar(s, seg, where, source, manifest, sr_class=sr_class))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(
            observer_device_context=device_observer(manifest, weights_sha256)
        ),
        procedure_reported=PROCEDURES.get(modality, IMAGING),
        # highdicom wants at least one group; with nothing found it is removed below
        imaging_measurements=(groups + drawn)
        or [_volumetric(empty[0], seg, str(first.SeriesInstanceUID), manifest)],
        title=codes.cid7021.ImagingMeasurementReport,
        # highdicom's Image Library entry reads single-frame geometry: a multi-frame source's
        # library is made below
        referenced_images=None if _multiframe(first) else list(key_images.values()) or [first],
    )
    if _multiframe(first):
        items = report[0].ContentSequence
        before = next(  # TID 1500 puts the library just before Imaging Measurements
            (
                i
                for i, item in enumerate(items)
                if item.ConceptNameCodeSequence[0].CodeValue == "126010"
            ),
            len(items),
        )
        items.insert(before, _frame_library(first, list(key_frames) or [1]))
    if not groups:
        # nothing found: no Imaging Measurements at all (TID 1500 asks for them or for
        # Qualitative Evaluations), as OHIF stops on a group it cannot draw
        content = report[0].ContentSequence
        report[0].ContentSequence = hd.sr.ContentSequence(
            [i for i in content if i.ConceptNameCodeSequence[0].CodeValue != "126010"]
        )
    summary = _summary(manifest, segments, empty)
    if summary is not None:
        report[0].ContentSequence.append(summary)
    said = json.dumps([asdict(m) for m in labels_summary], sort_keys=True)
    variant = (sr_class, str(seg.SOPInstanceUID), content_digest(said, weights_sha256))
    uids = [str(seg.SOPInstanceUID)]
    sop_instance_uid = derived_uid("sr", manifest, uids, *variant)
    # the documents this one replaces: never itself (a re-run that said the same again is the
    # same document, with the same UID)
    replaced = [p for p in previous if str(p.SOPInstanceUID) != sop_instance_uid]
    cls = hd.sr.Comprehensive3DSR if sr_class == "comprehensive3d" else hd.sr.ComprehensiveSR
    with building("SR"):
        sr = cls(
            evidence=[seg, *sources],
            content=report,
            series_instance_uid=derived_uid("sr-series", manifest, uids, *variant),
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
            contributing_equipment=contributing_equipment(manifest, weights_sha256, at),
        )
    stamp(sr, at)
    return sr
