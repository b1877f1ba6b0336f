"""The SR's planar groups, which OHIF draws (PITFALLS 30), and the IHE AIR evidence-creator
attributes, on four real slices of the gantry-tilted Philips CT and a mask thresholded from
their pixels. Each requirement of the issue is checked on the built object, read back."""

from __future__ import annotations

from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
from pydicom import Dataset, dcmread
from pydicom.sr.codedict import codes

from dicom_node.jobs.stacks import normal_of
from dicom_node.results import LabelMeasure
from dicom_node.settings import BUILTIN_MODELS
from tests.helpers import dciodvfy_errors, dsrdump_ok
from tests.models import band_labels, hounsfield
from workers.inference.manifest import Code, Manifest, load_manifest
from workers.results.provenance import PROCESSING_ALGORITHM, model_uid
from workers.results.regions import in_patient, key_frame, outline
from workers.results.seg import Mask, build_seg
from workers.results.sr import build_sr, finding_site

AT = datetime(2026, 12, 4, 9, 0, tzinfo=UTC)
WEIGHTS = "cd" * 32
PLANAR = "1.2.840.10008.5.1.4.1.1.88.33"


@pytest.fixture(scope="module")
def manifest() -> Manifest:
    found, _ = load_manifest(BUILTIN_MODELS, "ct-tissue")
    return found


@pytest.fixture(scope="module")
def sources(ct_dir: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")[:4]]


@pytest.fixture(scope="module")
def mask(sources: list[Dataset]) -> Mask:
    """Adipose, soft tissue and bone by HU band; no air: label 4 is empty."""
    volume = np.stack([hounsfield(ds) for ds in sources])
    labels = band_labels(volume, (-200.0, 0.0, 300.0))
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    return Mask(labels=labels, sop_instance_uids=uids, frame_numbers=(0,) * len(uids))


@pytest.fixture(scope="module")
def measures(mask: Mask, sources: list[Dataset]) -> list[LabelMeasure]:
    spacing = [float(v) for v in sources[0].PixelSpacing]
    voxel_ml = spacing[0] * spacing[1] * float(sources[0].SliceThickness) / 1000
    volume = np.stack([hounsfield(ds) for ds in sources])
    out = []
    for value in (1, 2, 3, 4):
        inside = volume[mask.labels == value]
        out.append(
            LabelMeasure(
                value=value,
                name=f"label {value}",
                voxels=int(inside.size),
                volume_ml=inside.size * voxel_ml,
                mean=float(inside.mean()) if inside.size else None,
                std=float(inside.std()) if inside.size else None,
                max_probability=0.9,
            )
        )
    return out


def read_back(ds: Dataset) -> Dataset:
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    out.seek(0)
    return dcmread(out)


def planar_groups(sr: Dataset) -> list[hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations]:
    cls = hd.sr.ComprehensiveSR if sr.SOPClassUID == PLANAR else hd.sr.Comprehensive3DSR
    return cls.from_dataset(read_back(sr)).content.get_planar_roi_measurement_groups()


@pytest.fixture(scope="module")
def seg(sources: list[Dataset], mask: Mask, manifest: Manifest) -> Dataset:
    return build_seg(sources, mask, manifest, weights_sha256=WEIGHTS, at=AT)


@pytest.fixture(scope="module")
def sr(
    seg: Dataset,
    sources: list[Dataset],
    mask: Mask,
    measures: list[LabelMeasure],
    manifest: Manifest,
) -> Dataset:
    return build_sr(seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT)


def test_an_outline_follows_the_edges_of_the_largest_area() -> None:
    inside = np.zeros((20, 30), bool)
    inside[4:10, 5:15] = True  # 6 rows x 10 columns
    inside[15:17, 20:22] = True  # a smaller island, not outlined
    points = outline(inside)
    assert np.array_equal(points[0], points[-1])  # closed
    columns, rows = points[:, 0], points[:, 1]
    # around the pixels' edges: the rectangle spans columns 5..15 and rows 4..10 in SCOORD
    assert columns.min() == pytest.approx(5.0, abs=0.5) and columns.max() == pytest.approx(
        15.0, abs=0.5
    )
    assert rows.min() == pytest.approx(4.0, abs=0.5) and rows.max() == pytest.approx(10.0, abs=0.5)
    touching = np.zeros((8, 8), bool)
    touching[:, :3] = True  # at the image border, it still closes
    assert outline(touching)[:, 0].min() == pytest.approx(0.0, abs=0.5)


def test_every_segment_with_voxels_is_drawn_on_its_key_image(
    sr: Dataset, mask: Mask, measures: list[LabelMeasure], sources: list[Dataset]
) -> None:
    groups = planar_groups(sr)
    assert len(groups) == 3  # label 4 (air) has no voxels: nothing to draw
    by_value = {m.value: m for m in measures}
    for value, group in zip((1, 2, 3), groups, strict=True):
        region = group.roi
        assert region.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
        points = region.value
        assert len(points) >= 4 and np.allclose(points[0], points[-1])
        key = mask.sop_instance_uids[key_frame(mask, value)]  # type: ignore[index]
        (image,) = region.ContentSequence[0].ReferencedSOPSequence  # SELECTED FROM the image
        assert image.ReferencedSOPInstanceUID == key
        # the outline runs along the segment's border: every point is half a pixel from the
        # centre of one of its pixels
        rows, columns = np.nonzero(mask.labels[mask.sop_instance_uids.index(key)] == value)
        centres = np.stack([columns + 0.5, rows + 0.5], axis=1)
        nearest = np.sqrt(((points[:, None, :] - centres[None]) ** 2).sum(-1)).min(axis=1)
        assert nearest.max() <= 0.75
        assert group.finding_type is not None
        assert not group.get_measurements()  # the numbers are the finding's volumetric group's
    # what OHIF shows first, from the volumetric group it merges in: the volume in mL, then the
    # mean HU, named as OHIF names them
    report = hd.sr.ComprehensiveSR.from_dataset(read_back(sr)).content
    for value, group in zip((1, 2, 3), report.get_volumetric_roi_measurement_groups(), strict=True):
        first, second, *_ = group.get_measurements()
        assert first.name == codes.SCT.Volume and first.unit.value == "mL"
        assert first.value == pytest.approx(by_value[value].volume_ml, rel=1e-3)
        assert second.name == codes.SCT.Mean and second.unit == codes.UCUM.HounsfieldUnit
        assert second.value == pytest.approx(by_value[value].mean, abs=1e-2)


def test_a_segments_two_groups_are_one_finding_with_one_tracking_uid(sr: Dataset) -> None:
    """OHIF merges groups by Tracking UID, and stops loading an SR on a group it cannot draw:
    each volumetric group has a planar twin with the same identifier and UID."""
    report = hd.sr.ComprehensiveSR.from_dataset(read_back(sr)).content
    volumetric = report.get_volumetric_roi_measurement_groups()
    planar = report.get_planar_roi_measurement_groups()
    assert len(volumetric) == len(planar) == 3  # air has no voxels: no group
    pairs = [(v.tracking_uid, p.tracking_uid) for v, p in zip(volumetric, planar, strict=True)]
    assert all(a == b and a for a, b in pairs)
    assert len({a for a, _ in pairs}) == 3
    assert [v.tracking_identifier for v in volumetric] == [p.tracking_identifier for p in planar]


def test_the_image_library_lists_the_key_images(sr: Dataset, mask: Mask) -> None:
    keys = {mask.sop_instance_uids[key_frame(mask, v)] for v in (1, 2, 3)}  # type: ignore[index]
    listed = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for library in read_back(sr).ContentSequence
        if library.ConceptNameCodeSequence[0].CodeValue == "111028"  # Image Library
        for group in library.ContentSequence
        for item in group.ContentSequence
        if item.ValueType == "IMAGE"
    }
    assert listed == keys


def test_a_comprehensive_3d_report_draws_in_the_frame_of_reference(
    seg: Dataset,
    sources: list[Dataset],
    mask: Mask,
    measures: list[LabelMeasure],
    manifest: Manifest,
) -> None:
    sr3d = build_sr(
        seg,
        sources,
        mask,
        measures,
        manifest,
        weights_sha256=WEIGHTS,
        at=AT,
        sr_class="comprehensive3d",
    )
    assert sr3d.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"
    by_uid = {str(ds.SOPInstanceUID): ds for ds in sources}
    for value, group in zip((1, 2, 3), planar_groups(sr3d), strict=True):
        region = group.roi
        assert region.value_type == hd.sr.ValueTypeValues.SCOORD3D
        assert region.ReferencedFrameOfReferenceUID == sources[0].FrameOfReferenceUID
        key = by_uid[mask.sop_instance_uids[key_frame(mask, value)]]  # type: ignore[index]
        # every point lies in the key image's plane (the tilted plane, not an axial one)
        normal = normal_of(np.array([float(v) for v in key.ImageOrientationPatient]))
        offsets = (region.value - np.array([float(v) for v in key.ImagePositionPatient])) @ normal
        assert np.abs(offsets).max() < 1e-2


def test_points_map_to_the_patient_as_the_pixel_grid_says(sources: list[Dataset]) -> None:
    ds = sources[0]
    centre = in_patient(np.array([[0.5, 0.5], [1.5, 0.5], [0.5, 1.5]]), ds, 0)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    between_rows, between_columns = (float(v) for v in ds.PixelSpacing)
    assert np.allclose(centre[0], position, atol=1e-3)
    assert np.allclose(centre[1] - centre[0], iop[:3] * between_columns, atol=1e-3)
    assert np.allclose(centre[2] - centre[0], iop[3:] * between_rows, atol=1e-3)


def test_the_finding_site_comes_from_the_manifest_then_the_source(
    manifest: Manifest, sources: list[Dataset]
) -> None:
    label = manifest.labels[0]
    assert sources[0].BodyPartExamined == "BRAIN"  # the Philips head CT says so
    brain = hd.sr.CodedConcept.from_code(codes.cid4030.Brain)
    assert finding_site(label, sources[0]).value == brain  # type: ignore[union-attr]
    assert finding_site(label, Dataset()) is None
    region = Dataset()
    region.AnatomicRegionSequence = [Dataset()]
    region.AnatomicRegionSequence[0].update(
        {"CodeValue": "69536005", "CodingSchemeDesignator": "SCT", "CodeMeaning": "Head"}
    )
    region.BodyPartExamined = "CHEST"  # the coded region wins
    assert finding_site(label, region).value.meaning == "Head"  # type: ignore[union-attr]
    pelvis = Dataset()
    pelvis.BodyPartExamined = "ABDOMENPELVIS"  # PS3.16 Annex L's spelling of it
    assert finding_site(label, pelvis).value.meaning == "Abdomen and Pelvis"  # type: ignore[union-attr]
    liver = Code(value="10200004", scheme="SCT", meaning="Liver")
    sited = label.model_copy(update={"site": liver})
    assert finding_site(sited, sources[0]).value.value == "10200004"  # type: ignore[union-attr]


def test_the_report_is_an_ihe_air_evidence_creators(
    sr: Dataset, seg: Dataset, sources: list[Dataset], manifest: Manifest
) -> None:
    """IHE AI Results, per object: the algorithm as contributing equipment, a TID 1500 root,
    the evidence it was made from, all in the source study."""
    for ds in (read_back(sr), read_back(seg)):
        assert ds.StudyInstanceUID == sources[0].StudyInstanceUID
        (algorithm,) = [
            e
            for e in ds.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeMeaning == PROCESSING_ALGORITHM.meaning
        ]
        assert algorithm.PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        assert algorithm.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
        assert algorithm.Manufacturer and algorithm.ManufacturerModelName == manifest.name
        assert f"{manifest.name} {manifest.version}" in algorithm.SoftwareVersions
        assert algorithm.DeviceUID == model_uid(manifest)
    newer = manifest.model_copy(update={"version": "1.0.1"})
    assert model_uid(newer) != model_uid(manifest)  # a Device UID per model version
    back = read_back(sr)
    (template,) = back.ContentTemplateSequence
    assert template.TemplateIdentifier == "1500" and template.MappingResource == "DCMR"
    (study,) = back.CurrentRequestedProcedureEvidenceSequence
    listed = {
        i.ReferencedSOPInstanceUID
        for s in study.ReferencedSeriesSequence
        for i in s.ReferencedSOPSequence
    }
    assert listed == {str(ds.SOPInstanceUID) for ds in sources} | {str(seg.SOPInstanceUID)}


@pytest.mark.parametrize("sr_class", ["comprehensive", "comprehensive3d"])
def test_the_report_passes_dciodvfy_and_dsrdump(  # noqa: PLR0917 - fixtures
    tmp_path: Path,
    seg: Dataset,
    sources: list[Dataset],
    mask: Mask,
    measures: list[LabelMeasure],
    manifest: Manifest,
    sr_class: str,
) -> None:
    report = build_sr(
        seg, sources, mask, measures, manifest, weights_sha256=WEIGHTS, at=AT, sr_class=sr_class
    )
    path = tmp_path / "sr.dcm"
    report.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    code, errors = dsrdump_ok(path)
    assert code == 0, errors
