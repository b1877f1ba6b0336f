"""The three result builders on four real CT slices and a mask thresholded from their pixels:
the SEG's frames are the mask, the SR's groups carry what the measurements say (and the
findings their thresholds decide), and the confidence map's stored values scale back to the
mask's confidence. Read back with highdicom, as a viewer's library would."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes

from dicom_node.results import LabelMeasure
from dicom_node.settings import BUILTIN_MODELS
from tests.models import band_labels, hounsfield
from workers.inference.manifest import Finding, Manifest, load_manifest
from workers.results.pmap import build_confidence_map
from workers.results.seg import Mask, ResultError, build_seg
from workers.results.sr import build_sr, finding_present

AT = datetime(2026, 12, 3, 12, 0, tzinfo=UTC)
WEIGHTS = "ab" * 32


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    found, _ = load_manifest(BUILTIN_MODELS, "ct-tissue")
    bone = Finding(label=3, name=found.labels[2].type, min_volume_ml=1.0, min_probability=0.6)
    return found.model_copy(
        update={"outputs": ("seg", "measurements", "findings"), "findings": (bone,)}
    )


@pytest.fixture(scope="module")
def sources(ct_dir: Path) -> list[Dataset]:
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:4]
    return [dcmread(p) for p in files]


@pytest.fixture(scope="module")
def mask(sources: list[Dataset]) -> Mask:
    """Bone above 300 HU, soft tissue 0-300 HU, adipose -200-0 HU; confidence from the margin."""
    volume = np.stack([hounsfield(ds) for ds in sources])
    labels = band_labels(volume, (-200.0, 0.0, 300.0))
    confidence = np.clip(np.abs(volume) / 4, 0, 255).astype(np.uint8)
    return Mask(
        labels=labels,
        sop_instance_uids=tuple(str(ds.SOPInstanceUID) for ds in sources),
        frame_numbers=(0,) * len(sources),
        confidence=confidence,
    )


def measure(mask: Mask, sources: list[Dataset], value: int, probability: float) -> LabelMeasure:
    spacing = [float(v) for v in sources[0].PixelSpacing]
    voxel_ml = spacing[0] * spacing[1] * float(sources[0].SliceThickness) / 1000
    inside = np.stack([hounsfield(ds) for ds in sources])[mask.labels == value]
    return LabelMeasure(
        value=value,
        name=f"label {value}",
        voxels=int(inside.size),
        volume_ml=inside.size * voxel_ml,
        mean=float(inside.mean()) if inside.size else None,
        std=float(inside.std()) if inside.size else None,
        max_probability=probability,
    )


def test_the_seg_frames_are_the_mask(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    seg = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    read = hd.seg.Segmentation.from_dataset(dcmread(encoded(seg)))
    assert read.number_of_segments == 4
    assert [d.segment_label for d in read.SegmentSequence] == [x.name for x in manifest.labels]
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    got = read.get_pixels_by_source_instance(
        source_sop_instance_uids=uids, combine_segments=True, skip_overlap_checks=True
    )
    assert np.array_equal(got, mask.labels)
    again = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    assert again.SOPInstanceUID == seg.SOPInstanceUID  # the same inputs, the same identity
    (equipment,) = [
        e for e in seg.ContributingEquipmentSequence if e.ManufacturerModelName == "ct-tissue"
    ]
    assert equipment.ManufacturerModelName == "ct-tissue"
    assert WEIGHTS[:16] in equipment.ContributionDescription


def encoded(ds: Dataset) -> BytesIO:
    """The object as a file would hold it."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return out


def test_a_seg_from_frames_that_are_not_the_sources_is_refused(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    short = Mask(mask.labels[:3], mask.sop_instance_uids[:3], mask.frame_numbers[:3])
    with pytest.raises(ResultError, match="3 mask frames for 4 source instances"):
        build_seg(sources, short, manifest, weights_sha256=WEIGHTS, at=AT)


def test_the_sr_carries_each_segments_measurements_and_findings(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    seg = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    probabilities = {1: 0.9, 2: 0.95, 3: 0.7, 4: 0.2}
    measures = [measure(mask, sources, v, p) for v, p in probabilities.items()]
    sr = build_sr(seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
    report = hd.sr.ComprehensiveSR.from_dataset(dcmread(encoded(sr)))
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert expected_empty(measures) == [4]  # air: nothing in these 4 slices
    assert len(groups) == 3  # a group per segment with voxels
    for group, expected in zip(groups, measures[:3], strict=True):
        volume = next(m for m in group.get_measurements() if m.name == codes.SCT.Volume)
        assert volume.value == pytest.approx(expected.volume_ml, abs=1e-3)
        assert volume.unit == hd.sr.CodedConcept("mL", "UCUM", "milliliter")
        mean = next(m for m in group.get_measurements() if m.name == codes.SCT.Mean)
        assert mean.value == pytest.approx(expected.mean, abs=1e-3)
        assert mean.unit == codes.UCUM.HounsfieldUnit
        assert group.referenced_segment[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == (
            expected.value
        )
    # the findings and the empty segment are said in words, under Qualitative Evaluations
    (said,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"
    ]
    bone = measures[2]
    assert [i.TextValue for i in said.ContentSequence] == [
        f"Bone: present (bone, {bone.volume_ml:.1f} mL, highest probability 0.70)",
        "air (segment 4): not found, 0 mL",
    ]
    finding = manifest.findings[0].name.value

    def evaluated(group: hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations) -> list:
        return [e.value for e in group.get_qualitative_evaluations() if e.name.value == finding]

    assert evaluated(groups[2]) == [codes.SCT.Present]  # 0.7 >= 0.6, volume >= 1 mL
    assert [evaluated(g) for g in (groups[0], groups[1])] == [[], []]
    measures[2] = measure(mask, sources, 3, 0.5)
    unsure = build_sr(seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT)
    read = hd.sr.ComprehensiveSR.from_dataset(unsure).content
    bone = read.get_volumetric_roi_measurement_groups()[2]
    assert evaluated(bone) == [codes.SCT.Absent]


def expected_empty(measures: list[LabelMeasure]) -> list[int]:
    return [m.value for m in measures if not m.voxels]


def test_a_finding_needs_voxels_volume_and_probability(manifest: Manifest) -> None:
    finding = manifest.findings[0]  # bone: 1 mL, probability 0.6

    def present(voxels: int, volume: float, probability: float | None) -> bool:
        m = LabelMeasure(3, "bone", voxels, volume, max_probability=probability)
        return finding_present(finding, m)

    assert present(100, 1.0, 0.6)
    assert not present(100, 0.99, 0.9)
    assert not present(100, 5.0, 0.59)
    assert not present(100, 5.0, None)
    assert not present(0, 5.0, 0.9)


def test_an_sr_without_a_labels_measurements_is_refused(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    seg = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    measures = [measure(mask, sources, v, 0.9) for v in (1, 2, 4)]
    with pytest.raises(ResultError, match=r"no measurements for label 3 \(bone\)"):
        build_sr(seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT)


def test_the_confidence_map_scales_back_to_the_mask(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    pm = build_confidence_map(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"
    assert int(pm.NumberOfFrames) == 4
    mapping = pm.SharedFunctionalGroupsSequence[0].RealWorldValueMappingSequence[0]
    slope = float(mapping.RealWorldValueSlope)
    frames = pm.pixel_array.astype(np.float64) * slope
    for frame, item in zip(frames, pm.PerFrameFunctionalGroupsSequence, strict=True):
        uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        expected = mask.confidence[mask.sop_instance_uids.index(uid)] / 255.0
        assert np.abs(frame - expected).max() <= 1e-6  # float32: the mask's value itself
    assert pm.BitsAllocated == 32 and "FloatPixelData" in pm  # what OHIF (dcmjs) reads
    without = Mask(mask.labels, mask.sop_instance_uids, mask.frame_numbers)
    with pytest.raises(ResultError, match="mask kept no confidence"):
        build_confidence_map(sources, without, manifest, weights_sha256=WEIGHTS, at=AT)


def test_an_objects_identity_follows_its_content(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    seg = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    later = datetime(2026, 12, 4, tzinfo=UTC)
    same = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=later)
    assert same.SOPInstanceUID == seg.SOPInstanceUID  # the same content again: the same object
    changed = mask.labels.copy()
    changed[0, 0, 0] = 3 if changed[0, 0, 0] != 3 else 2  # one voxel differs
    other = Mask(changed, mask.sop_instance_uids, mask.frame_numbers, confidence=mask.confidence)
    assert build_seg(sources, other, manifest, weights_sha256=WEIGHTS, at=AT).SOPInstanceUID != (
        seg.SOPInstanceUID
    )
    retrained = build_seg(sources, mask, manifest, weights_sha256="cd" * 32, at=AT)
    assert retrained.SOPInstanceUID != seg.SOPInstanceUID  # new weights, a new object
    pm = build_confidence_map(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    less_sure = Mask(
        mask.labels, mask.sop_instance_uids, mask.frame_numbers, confidence=mask.confidence // 2
    )
    assert (
        build_confidence_map(
            sources, less_sure, manifest, weights_sha256=WEIGHTS, at=AT
        ).SOPInstanceUID
        != pm.SOPInstanceUID
    )


def test_a_new_report_replaces_only_earlier_documents_never_itself(
    sources: list[Dataset], mask: Mask, manifest: Manifest
) -> None:
    seg = build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)
    measures = [measure(mask, sources, v, 0.9) for v in (1, 2, 3, 4)]
    first = build_sr(seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT)
    again = build_sr(
        seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT, previous=[first]
    )
    assert again.SOPInstanceUID == first.SOPInstanceUID  # it said the same: the same document
    assert "PredecessorDocumentsSequence" not in again  # and it does not replace itself
    measures[2] = measure(mask, sources, 3, 0.5)  # the bone finding is Absent now
    revised = build_sr(
        seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT, previous=[first]
    )
    assert revised.SOPInstanceUID != first.SOPInstanceUID
    (study,) = revised.PredecessorDocumentsSequence
    named = [
        s.ReferencedSOPInstanceUID
        for x in study.ReferencedSeriesSequence
        for s in x.ReferencedSOPSequence
    ]
    assert named == [first.SOPInstanceUID]
