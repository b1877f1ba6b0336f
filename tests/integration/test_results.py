"""SEG, SR and key images from real pipeline results, checked the way a viewer and a validator
would: dciodvfy with 0 errors and dsrdump exit 0 for every object, SEG pixels equal to an
independent threshold of the source pixel data frame by frame, segment centroids in patient
coordinates from the SEG's own geometry, and SR groups that reference the right segments.

Inputs: the gantry-tilted CT (54 slices), the sagittal MR (35 slices) and two multi-frame CTs
(Enhanced CT, Legacy Converted Enhanced CT). The model is a real 1x1x1 convolution with known
weights that cuts the intensity into bands: one segment per band.
"""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from dicom_node.jobs.stacks import read_headers
from dicom_node.settings import ProfileSettings
from tests import recompose as rc
from tests.helpers import dciodvfy_errors, dsrdump_ok
from tests.models import WINDOW, band_labels, build_model, run_model
from workers.inference.decode import pixel_array
from workers.inference.runners import ModelCache
from workers.results.build import build_results, load_mask
from workers.results.check import read_back
from workers.results.keyimages import BANNER
from workers.results.provenance import model_uid
from workers.results.regular import Grid, regularise
from workers.results.seg import ResultError

TILTED = "dcm_qa_ct/In/Philips/S21610/S2010"
SAGITTAL = "dcm_qa_decubitus/In/HFS/3_t1_fl2d_sag"
ENHANCED_CT = "pydicom-data/eCT_Supplemental.dcm"
LEGACY_MF = "dcmqi/data/segmentations/23x38x3/multiframe/mf.dcm"
CT_BANDS = (-500.5, -50.5, 300.5)  # air / fat / soft tissue / bone
MR_BANDS = (100.5, 300.5)
PROFILES = {
    "default": ProfileSettings(),
    "legacy": ProfileSettings(key_images=3, kos=True),
    "modern": ProfileSettings(sr_class="comprehensive3d", omit_empty_frames=True),
    "slicer": ProfileSettings(seg_geometry="regular"),
}
VARIABLE = "two regimes"  # the straight Philips CT re-spaced: 8 x 4 mm slices, then 6 x 7 mm
VARIABLE_GAPS = [4.0] * 8 + [5.1] + [7.0] * 6
VARIABLE_THICKNESS = [4.0] * 9 + [7.0] * 7
FINDINGS = """
[[findings]]
label = {label}
name = {{ value = "272673000", scheme = "SCT", meaning = "Bone" }}
min_volume_ml = 0.001
"""


def series_files(testdata: Path, where: str) -> list[Path]:
    path = testdata / where
    if path.is_file():
        return [path]
    return [p for p in path.iterdir() if p.name != "DIRFILE"]


def source_values(path: Path) -> dict[int, np.ndarray]:
    """Rescaled values per frame number (0 for a single-frame instance), from pydicom."""
    ds = dcmread(path)
    stored = pixel_array(ds, path).astype(np.float64)
    if int(getattr(ds, "NumberOfFrames", 1) or 1) == 1:
        slope = float(getattr(ds, "RescaleSlope", 1))
        return {0: stored * slope + float(getattr(ds, "RescaleIntercept", 0))}
    out = {}
    for n in range(1, int(ds.NumberOfFrames) + 1):
        group = ds.PerFrameFunctionalGroupsSequence[n - 1]
        shared = ds.SharedFunctionalGroupsSequence[0]
        transform = (
            group.PixelValueTransformationSequence[0]
            if "PixelValueTransformationSequence" in group
            else shared.PixelValueTransformationSequence[0]
        )
        out[n] = stored[n - 1] * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    return out


class Case:
    def __init__(self, tmp: Path, files: list[Path], bands: tuple[float, ...], **build: Any):
        self.tmp, self.files, self.bands = tmp, files, bands
        extra = FINDINGS.format(label=len(bands))
        build_model(tmp / "models", "bands", "torchscript", threshold_hu=bands, extra=extra)
        manifest = tmp / "models" / "bands" / "manifest.toml"
        manifest.write_text(
            manifest.read_text().replace(
                'outputs = ["seg", "measurements"]', 'outputs = ["seg", "measurements", "findings"]'
            )
        )
        self.job = run_model(tmp / "models", "bands", files, tmp / "results")
        self.summary = self.job.to_json()  # as stored on the job row
        self.manifest = ModelCache(tmp / "models", "cpu").get("bands").manifest
        self.paths = {
            str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in self.files
        }
        self.results = build_results(
            self.job,
            self.manifest,
            build.pop("profiles", PROFILES),
            self.paths,
            at=datetime.now(UTC),
            **build,
        ).to_json()
        [self.series] = self.summary["series"]
        self.mask = load_mask(Path(self.summary["path"]) / self.series["mask"])

    def objects(self, profile: str, kind: str) -> list[dict[str, str]]:
        return [o for o in self.results["objects"][profile] if o["kind"] == kind]

    def expected(self, k: int) -> np.ndarray:
        """Independent expectation for mask frame ``k``: bands of the clipped source values."""
        uid, frame = self.mask.sop_instance_uids[k], self.mask.frame_numbers[k]
        values = np.clip(source_values(self.paths[uid])[frame], *WINDOW)
        return band_labels(values, self.bands)


@pytest.fixture(scope="module", params=[TILTED, SAGITTAL, ENHANCED_CT, LEGACY_MF])
def case(request: pytest.FixtureRequest, testdata: Path, tmp_path_factory: pytest.TempPathFactory):
    files = series_files(testdata, request.param)
    bands = MR_BANDS if request.param == SAGITTAL else CT_BANDS
    return Case(tmp_path_factory.mktemp("results"), files, bands)


@pytest.fixture(scope="module")
def variable(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """Two slice spacings in one series. The model runs on a resampled grid and maps back, so
    its mask is not the per-frame banding the other cases check against."""
    tmp = tmp_path_factory.mktemp("variable")
    slices = rc.respace(rc.straight(testdata), VARIABLE_GAPS, VARIABLE_THICKNESS)
    return Case(tmp, rc.write(rc.new_series(slices, VARIABLE), tmp / "input"), CT_BANDS)


def test_every_object_is_valid(case: Case) -> None:
    all_valid(case)


def test_every_object_of_a_two_spacing_series_is_valid(variable: Case) -> None:
    all_valid(variable)


def all_valid(case: Case, expected: frozenset[str] = frozenset({"seg", "sr", "sc", "kos"})) -> None:
    kinds = set()
    for profile, objects in case.results["objects"].items():
        for obj in objects:
            path = Path(obj["path"])
            assert dciodvfy_errors(path) == [], (profile, obj["kind"])
            # the hot path's structural check passed (it built them); highdicom reads each too
            read_back(path, obj["kind"])
            if obj["kind"] == "sr":
                code, err = dsrdump_ok(path)
                assert code == 0, err
            kinds.add(obj["kind"])
    assert kinds == expected


def regular_grid(case: Case) -> Grid | None:
    """The grid the slicer profile's SEG should be on, from the sources' own headers."""
    headers = {
        (h.ref.sop_instance_uid, h.ref.frame_number or 0): h
        for p in case.paths.values()
        for h in read_headers(dcmread(p, stop_before_pixels=True))
    }
    frames = zip(case.mask.sop_instance_uids, case.mask.frame_numbers, strict=True)
    return regularise(case.mask.labels, [headers[(u, f)] for u, f in frames])


def assert_on_the_grid(seg: hd.seg.Segmentation, grid: Grid) -> None:
    """Every SEG frame is its segment on the grid plane at its position."""
    planes = np.array([p[0].ImagePositionPatient for p in grid.positions], dtype=float)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        j = int(np.abs(planes - ipp).sum(axis=1).argmin())
        assert np.abs(planes[j] - ipp).max() < 1e-3
        np.testing.assert_array_equal(frame > 0, grid.pixels[j] == number)
        # a frame in a source slice's plane still names it, and says its pixels moved (a
        # frame inside a wider gap has no source slice)
        for derivation in item.get("DerivationImageSequence", []):
            for source in derivation.SourceImageSequence:
                assert source.SpatialLocationsPreserved == "NO"


def test_seg_pixels_equal_the_independent_mask_frame_by_frame(case: Case) -> None:
    grid = regular_grid(case)
    for profile in PROFILES:
        [obj] = case.objects(profile, "seg")
        seg = hd.seg.segread(obj["path"])
        n = len(case.bands)
        assert [int(s.SegmentNumber) for s in seg.SegmentSequence] == list(range(1, n + 1))
        if profile == "slicer" and grid is not None:
            assert_on_the_grid(seg, grid)
            continue
        for k, (uid, frame) in enumerate(
            zip(case.mask.sop_instance_uids, case.mask.frame_numbers, strict=True)
        ):
            expected = case.expected(k)
            np.testing.assert_array_equal(case.mask.labels[k], expected)
            if frame:
                got = seg.get_pixels_by_source_frame(
                    source_sop_instance_uid=uid,
                    source_frame_numbers=[frame],
                    ignore_spatial_locations=True,
                    assert_missing_frames_are_empty=True,
                )[0]
            else:
                got = seg.get_pixels_by_source_instance(
                    source_sop_instance_uids=[uid],
                    ignore_spatial_locations=True,
                    assert_missing_frames_are_empty=True,
                )[0]
            for number in range(1, n + 1):
                np.testing.assert_array_equal(got[..., number - 1], expected == number)


def seg_centroids(seg: hd.seg.Segmentation) -> dict[int, np.ndarray]:
    """Each segment's centroid in patient coordinates, from the SEG's own frame geometry."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    dy, dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    sums: dict[int, list[np.ndarray]] = {}
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        rows, cols = np.nonzero(frame)
        sums.setdefault(number, []).append(
            ipp + np.outer(cols * dx, iop[:3]) + np.outer(rows * dy, iop[3:])
        )
    return {n: np.concatenate(p).mean(axis=0) for n, p in sums.items() if sum(map(len, p))}


def test_segment_centroids_in_patient_space_match_the_mask(case: Case) -> None:
    saved = np.load(Path(case.summary["path"]) / case.series["mask"])
    affine = saved["affine"]
    voxel = min(float(np.linalg.norm(affine[:3, i])) for i in range(3))
    for profile in PROFILES:
        [obj] = case.objects(profile, "seg")
        got = seg_centroids(hd.seg.segread(obj["path"]))
        for number in range(1, len(case.bands) + 1):
            k, rows, cols = np.nonzero(case.mask.labels == number)
            if len(k) == 0:
                assert number not in got
                continue
            ijk = np.stack([cols, rows, k, np.ones_like(k)]).astype(float)
            expected = (affine @ ijk)[:3].mean(axis=1)
            assert np.linalg.norm(got[number] - expected) <= 0.5 * voxel, (profile, number)


def test_sr_groups_reference_the_seg_segments_and_carry_the_measurements(case: Case) -> None:
    labels = {item["value"]: item for item in case.series["labels"]}
    affine = np.load(Path(case.summary["path"]) / case.series["mask"])["affine"]
    voxel_ml = abs(np.linalg.det(affine[:3, :3])) / 1000
    for profile, sop_class in (
        ("default", "1.2.840.10008.5.1.4.1.1.88.33"),
        ("modern", "1.2.840.10008.5.1.4.1.1.88.34"),
    ):
        [seg_obj], [sr_obj] = case.objects(profile, "seg"), case.objects(profile, "sr")
        sr = hd.sr.srread(sr_obj["path"])
        assert sr.SOPClassUID == sop_class
        assert sr.VerificationFlag == "UNVERIFIED" and sr.CompletionFlag == "COMPLETE"
        groups = sr.content.get_volumetric_roi_measurement_groups()
        found = [n for n in range(1, len(case.bands) + 1) if labels[n]["voxels"]]
        assert len(groups) == len(found)  # a segment without voxels has no group
        for number, group in zip(found, groups, strict=True):
            segment = group.referenced_segment
            assert segment.referenced_sop_instance_uid == seg_obj["sop_instance_uid"]
            assert list(segment.referenced_segment_numbers) == [number]
            voxels = int((case.mask.labels == number).sum())
            [volume] = group.get_measurements(name=codes.SCT.Volume)
            assert volume.value == pytest.approx(voxels * voxel_ml, rel=1e-3, abs=1e-3)
            assert voxels == labels[number]["voxels"]
        # the observer is the algorithm
        assert sr.content.get_observer_contexts()[0].observer_type == codes.DCM.Device
        # evidence (IHE AIR): the SEG and the whole source series
        evidence = {
            sop.ReferencedSOPInstanceUID
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
        }
        assert evidence == {seg_obj["sop_instance_uid"], *case.mask.sop_instance_uids}
        # and one planar group per segment with voxels, which OHIF draws
        drawn = sr.content.get_planar_roi_measurement_groups()
        assert len(drawn) == sum(1 for n in range(1, len(case.bands) + 1) if labels[n]["voxels"])


def dcmqi(tool: str, *args: str) -> str:
    done = subprocess.run([tool, *args], capture_output=True, text=True, check=False, timeout=300)
    return f"exit {done.returncode}\n{done.stdout}{done.stderr}"


def test_dcmqi_reads_the_slicer_profiles_seg_and_every_sr(case: Case, tmp_path: Path) -> None:
    dcmqi_reads(case, tmp_path)


def test_dcmqi_reads_a_two_spacing_series_results(variable: Case, tmp_path: Path) -> None:
    dcmqi_reads(variable, tmp_path)


def dcmqi_reads(case: Case, tmp_path: Path) -> None:
    """3D Slicer's converters: the regular SEG becomes one label map per segment (tilted and
    re-spaced inputs included), on the regular grid, and each SR's measurement groups come out
    with their volumes."""
    grid = regular_grid(case)
    if grid is not None:
        assert_on_the_grid(hd.seg.segread(case.objects("slicer", "seg")[0]["path"]), grid)
    [seg_obj] = case.objects("slicer", "seg")
    out = tmp_path / "seg"
    out.mkdir()
    said = dcmqi(
        "segimage2itkimage", "--inputDICOM", seg_obj["path"], "--outputDirectory", str(out)
    )
    assert "ERROR" not in said, said
    maps = sorted(out.glob("*.nrrd"))
    assert len(maps) == len(case.bands), said  # one label map per segment
    found = sum(1 for n in range(1, len(case.bands) + 1) if (case.mask.labels == n).any())
    for profile in PROFILES:
        for sr_obj in case.objects(profile, "sr"):
            meta = tmp_path / f"{profile}-sr.json"
            said = dcmqi(
                "tid1500reader", "--inputDICOM", sr_obj["path"], "--outputMetadata", str(meta)
            )
            assert said.startswith("exit 0"), said
            groups = json.loads(meta.read_text())["Measurements"]
            by_segment = [g for g in groups if "ReferencedSegment" in g]
            assert len(by_segment) == found, (profile, groups)
            assert all(g["segmentationSOPInstanceUID"] for g in by_segment)
            for group in by_segment:  # volume first, then the mean
                names = [m["quantity"]["CodeMeaning"] for m in group["measurementItems"]]
                assert names[:2] == ["Volume", "Mean"], group


def test_the_key_object_selection_flags_the_key_images(case: Case) -> None:
    """For a PACS viewer that reads neither SEG nor SR: each segment's key slice and the SC
    key images, selected "Of Interest" by the algorithm, sent after them."""
    [kos_obj] = case.objects("legacy", "kos")
    kinds = [o["kind"] for o in case.results["objects"]["legacy"]]
    assert kinds[-1] == "kos"
    kos = hd.ko.KeyObjectSelectionDocument.from_dataset(dcmread(kos_obj["path"]))
    assert kos.ConceptNameCodeSequence[0].CodeValue == codes.DCM.OfInterest.value
    assert kos.StudyInstanceUID == dcmread(next(iter(case.paths.values()))).StudyInstanceUID
    selected = {
        item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for item in kos.ContentSequence
        if item.ValueType in ("IMAGE", "COMPOSITE")
    }
    pictures = {o["sop_instance_uid"] for o in case.objects("legacy", "sc")}
    keys = set()
    for number in range(1, len(case.bands) + 1):
        areas = (case.mask.labels == number).reshape(len(case.mask.labels), -1).sum(axis=1)
        if areas.max() > 0:
            keys.add(case.mask.sop_instance_uids[int(areas.argmax())])
    assert selected == keys | pictures
    assert not [o for p in PROFILES if p != "legacy" for o in case.objects(p, "kos")]


AIR_REQUIREMENTS = (
    "every object: in the source study",
    "every object: Contributing Equipment 'Processing Algorithm' with Manufacturer, Model Name, "
    "Software Versions and the model version's Device UID",
    "SR: TID 1500 root with ContentTemplateSequence 1500 (DCMR)",
    "SR: CurrentRequestedProcedureEvidenceSequence lists the source series and the SEG",
    "SR: the observer is the algorithm (a device), with the model's UID",
    "KOS per profile (legacy here): the key images, evidence in the source study",
)


def test_ihe_air_evidence_creator_conformance(case: Case) -> None:
    """IHE AI Results, checked on every produced object; each requirement is listed above."""
    source = dcmread(next(iter(case.paths.values())), stop_before_pixels=True)
    device = model_uid(case.manifest)
    checked = set()
    for profile, objects in case.results["objects"].items():
        for obj in objects:
            ds = dcmread(obj["path"], stop_before_pixels=True)
            assert ds.StudyInstanceUID == source.StudyInstanceUID, (profile, obj["kind"])
            checked.add(AIR_REQUIREMENTS[0])
            [algorithm] = [
                e
                for e in ds.ContributingEquipmentSequence
                if e.PurposeOfReferenceCodeSequence[0].CodeMeaning == "Processing Algorithm"
            ]
            assert algorithm.Manufacturer and algorithm.ManufacturerModelName == "bands"
            assert "bands 1.0.0" in list(algorithm.SoftwareVersions)
            assert algorithm.DeviceUID == device
            checked.add(AIR_REQUIREMENTS[1])
            if obj["kind"] == "sr":
                (template,) = ds.ContentTemplateSequence
                assert (template.MappingResource, template.TemplateIdentifier) == ("DCMR", "1500")
                checked.add(AIR_REQUIREMENTS[2])
                [seg_obj] = [o for o in objects if o["kind"] == "seg"]
                (study,) = ds.CurrentRequestedProcedureEvidenceSequence
                series = {s.SeriesInstanceUID: s for s in study.ReferencedSeriesSequence}
                listed = {
                    i.ReferencedSOPInstanceUID
                    for s in series.values()
                    for i in s.ReferencedSOPSequence
                }
                assert source.SeriesInstanceUID in series
                assert listed == {seg_obj["sop_instance_uid"], *case.paths}
                checked.add(AIR_REQUIREMENTS[3])
                sr = hd.sr.srread(obj["path"])
                (observer,) = sr.content.get_observer_contexts()
                assert observer.observer_type == codes.DCM.Device
                assert observer.observer_identifying_attributes.uid == device
                checked.add(AIR_REQUIREMENTS[4])
            if obj["kind"] == "kos":
                (study,) = ds.CurrentRequestedProcedureEvidenceSequence
                assert study.StudyInstanceUID == source.StudyInstanceUID
                checked.add(AIR_REQUIREMENTS[5])
    assert checked == set(AIR_REQUIREMENTS)


def test_a_result_with_nothing_found_is_still_a_valid_report(
    testdata: Path, tmp_path: Path
) -> None:
    """A negative study: the SEG has empty segments, the SR says "not found" with no group to
    draw, and the legacy profile's key images and KOS are simply not made (no job failure)."""
    nothing = Case(tmp_path, series_files(testdata, TILTED), (5000.5,))
    kinds = [o["kind"] for o in nothing.results["objects"]["legacy"]]
    assert kinds == ["seg", "sr"]
    all_valid(nothing, frozenset({"seg", "sr"}))
    [sr_obj] = nothing.objects("default", "sr")
    sr = dcmread(sr_obj["path"])
    [said] = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375"]
    texts = [i.TextValue for i in said.ContentSequence if i.ValueType == "TEXT"]
    assert texts[-1] == "bone (segment 1): not found, 0 mL"
    assert texts[0].startswith("Bone: absent (bone, 0.0 mL")  # the finding, in words


def test_uids_are_deterministic_and_differ_per_variant(case: Case, tmp_path: Path) -> None:
    again = build_results(
        case.job, case.manifest, PROFILES, case.paths, at=datetime.now(UTC)
    ).to_json()
    uids = lambda r: [o["sop_instance_uid"] for p in PROFILES for o in r["objects"][p]]  # noqa: E731
    assert uids(again) == uids(case.results)
    [a], [b] = case.objects("default", "seg"), case.objects("modern", "seg")
    assert a["sop_instance_uid"] != b["sop_instance_uid"]  # with and without empty frames


def test_key_images_show_the_outline_and_the_banner(case: Case) -> None:
    images = case.objects("legacy", "sc")
    assert 1 <= len(images) <= 3
    colors = {tuple(label.color) for label in case.manifest.labels}
    for obj in images:
        ds = dcmread(obj["path"])
        assert ds.BurnedInAnnotation == "YES" and "AI" in ds.SeriesDescription
        rgb = ds.pixel_array
        band = rgb[: max(10, ds.Rows // 28)]
        assert (band == (255, 255, 0)).all(axis=-1).any(), "banner text"
        found = {tuple(int(c) for c in p) for p in rgb[band.shape[0] + 2 :].reshape(-1, 3)}
        assert colors & found, "an outline in a label's colour"
    assert BANNER.startswith("AI RESULT")


@pytest.fixture(scope="module")
def tilted(testdata: Path, tmp_path_factory: pytest.TempPathFactory) -> Case:
    return Case(
        tmp_path_factory.mktemp("tilted"),
        series_files(testdata, TILTED),
        CT_BANDS,
        profiles={"default": PROFILES["default"]},
    )


def _files(results: dict[str, Any]) -> dict[str, bytes]:
    return {
        o["sop_instance_uid"]: Path(o["path"]).read_bytes()
        for objects in results["objects"].values()
        for o in objects
    }


def test_a_rerun_that_changes_nothing_makes_the_same_objects_byte_for_byte(
    tilted: Case,
) -> None:
    """A re-run of the same model on the same inputs: every object has the UID it had, and the
    same bytes (the earlier run's file, not a new one with new creation times): the PACS gets
    what it may already hold. A re-send sends that file again."""
    job = run_model(tilted.tmp / "models", "bands", tilted.files, tilted.tmp / "results", "job-2")
    [first_sr] = tilted.objects("default", "sr")
    again = build_results(
        job,
        tilted.manifest,
        {"default": PROFILES["default"]},
        tilted.paths,
        at=datetime.now(UTC),
        previous={"default": [Path(first_sr["path"])]},
    ).to_json()
    before = _files(tilted.results)
    after = _files(again)
    assert set(after) <= set(before)  # the same UIDs
    for uid, data in after.items():
        assert data == before[uid], uid  # and the same bytes
    sr = dcmread(BytesIO(after[first_sr["sop_instance_uid"]]))
    assert "PredecessorDocumentsSequence" not in sr  # it does not replace itself


def test_a_rerun_that_changes_the_content_gets_new_uids_naming_the_old(tilted: Case) -> None:
    """Other weights (a retrained model, same name and version) give another mask: new SEG and
    SR UIDs, and the new SR names the old one as its predecessor, never itself."""
    models = tilted.tmp / "retrained"
    build_model(models, "bands", "torchscript", threshold_hu=(-500.5, -50.5, 250.5))
    job = run_model(models, "bands", tilted.files, tilted.tmp / "results", "job-3")
    manifest = ModelCache(models, "cpu").get("bands").manifest
    [first_sr] = tilted.objects("default", "sr")
    changed = build_results(
        job,
        manifest,
        {"default": PROFILES["default"]},
        tilted.paths,
        at=datetime.now(UTC),
        previous={"default": [Path(first_sr["path"])]},
    ).to_json()
    assert not set(_files(changed)) & set(_files(tilted.results))  # no UID reused
    [sr_obj] = [o for o in changed["objects"]["default"] if o["kind"] == "sr"]
    sr = dcmread(sr_obj["path"])
    [study] = sr.PredecessorDocumentsSequence
    named = [
        s.ReferencedSOPInstanceUID
        for x in study.ReferencedSeriesSequence
        for s in x.ReferencedSOPSequence
    ]
    assert named == [first_sr["sop_instance_uid"]] and sr.SOPInstanceUID not in named


def test_new_results_name_the_reports_they_replace(tilted: Case) -> None:
    [first] = tilted.objects("default", "sr")
    again = build_results(
        tilted.job,
        tilted.manifest,
        {"default": ProfileSettings(sr_class="comprehensive3d")},
        tilted.paths,
        at=datetime.now(UTC),
        previous={"default": [Path(first["path"])]},
    ).to_json()
    [sr_obj] = [o for o in again["objects"]["default"] if o["kind"] == "sr"]
    sr = dcmread(sr_obj["path"])
    [study] = sr.PredecessorDocumentsSequence
    refs = [
        s.ReferencedSOPInstanceUID
        for x in study.ReferencedSeriesSequence
        for s in x.ReferencedSOPSequence
    ]
    assert refs == [first["sop_instance_uid"]]
    assert dciodvfy_errors(Path(sr_obj["path"])) == []
    assert dsrdump_ok(Path(sr_obj["path"]))[0] == 0


def test_a_source_instance_gone_from_storage_is_a_clear_job_error(tilted: Case) -> None:
    paths = dict(tilted.paths)
    gone = next(iter(paths))
    del paths[gone]
    with pytest.raises(ResultError, match=f"source instance {gone} is no longer stored"):
        build_results(tilted.job, tilted.manifest, PROFILES, paths, at=datetime.now(UTC))


def test_fractional_seg_keeps_the_probabilities(testdata: Path, tmp_path: Path) -> None:
    files = series_files(testdata, TILTED)
    build_model(
        tmp_path / "models",
        "frac",
        "torchscript",
        threshold_hu=300.5,
        extra='[inference]\nseg_type = "fractional"',
    )
    job = run_model(tmp_path / "models", "frac", files, tmp_path / "results")
    summary = job.to_json()
    manifest = ModelCache(tmp_path / "models", "cpu").get("frac").manifest
    paths = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    out = build_results(
        job, manifest, {"default": ProfileSettings()}, paths, at=datetime.now(UTC)
    ).to_json()
    [seg_obj, sr_obj] = out["objects"]["default"]
    for obj in (seg_obj, sr_obj):
        assert dciodvfy_errors(Path(obj["path"])) == []
    seg = hd.seg.segread(seg_obj["path"])
    assert seg.SegmentationType == "FRACTIONAL"
    mask = load_mask(Path(summary["path"]) / summary["series"][0]["mask"])
    uid = mask.sop_instance_uids[0]
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[uid],
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )[0, ..., 0]
    # the fixed-gain model is near-certain away from the threshold: probabilities ~0 or ~1,
    # and > 0.5 exactly where the binary label is
    np.testing.assert_array_equal(got > 0.5, mask.labels[0] == 1)
