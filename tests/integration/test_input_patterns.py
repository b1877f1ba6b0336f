"""Every input pattern of docs/input-patterns.md, one case each, on real slices re-composed.

Processed cases run the real pipeline (a threshold network with known weights) and the real
SEG/SR builders, then are checked independently of the node's own geometry code:

- every SEG frame lies on its source frame's plane (ImagePositionPatient within 0.01 mm) and
  every source frame of the chosen stack is referenced;
- each segment's centroid in patient coordinates, from the SEG's pixels placed by the *source*
  files' geometry, equals the centroid of the independently thresholded source pixels within
  0.5 voxel;
- the SR volume equals the sum over frames of the segment's area times the frame's real extent
  along the normal (half the distance to each neighbour; the one gap at the ends), within 1 %.

Refused cases check the exact refusal text, as an admin reads it in ``jobs``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from sqlalchemy import select

from dicom_node.db.models import Instance
from dicom_node.domain import JobState
from dicom_node.jobs.facts import study_stack_facts
from dicom_node.jobs.rules import evaluate
from dicom_node.settings import ProfileSettings, RuleMatch, RuleSettings
from tests import recompose as rc
from tests.helpers import RunningNode, cli, dciodvfy_errors, free_port
from tests.models import CT_BANDS, MODELS, WINDOW, band_labels, build_model, run_model
from tests.peers import storescp
from tests.scenario import Scenario, destination
from workers.inference.runners import ModelCache
from workers.inference.volume import VolumeError, load_series
from workers.results.build import build_results
from workers.results.seg import quiet_person_names

MR_BANDS = (100.5, 300.5)


@dataclass(frozen=True)
class Pattern:
    """One row of the input-pattern table."""

    build: Callable[[Path], list[Dataset]]
    bands: tuple[float, ...] = CT_BANDS
    rule: dict[str, Any] = field(default_factory=dict)
    stacks: int = 1  # stacks the series splits into
    spacing: str | None = None  # the chosen stack's spacing summary
    chosen_frames: int | None = None
    notes: int = 0  # notes on the chosen stack (duplicates collapsed, gaps interpolated)
    repairs: int = 0  # source attributes repaired before they are copied into the results


def _tilted(testdata: Path) -> list[Dataset]:
    return rc.read_series(testdata, rc.TILTED)


def two_regimes(series: Callable[[Path], list[Dataset]], first: int, second: int):
    def build(testdata: Path) -> list[Dataset]:
        gaps = [4.0] * first + [5.1] + [7.0] * second
        thickness = [4.0] * (first + 1) + [7.0] * (second + 1)
        return rc.new_series(rc.respace(series(testdata), gaps, thickness), "two regimes")

    return build


def irregular(testdata: Path) -> list[Dataset]:
    gaps = list(np.random.default_rng(13).uniform(3.0, 7.0, 19).round(3))
    return rc.new_series(rc.respace(rc.straight(testdata), gaps, [5.0] * 20), "irregular")


def overlapping(testdata: Path) -> list[Dataset]:
    return rc.new_series(rc.respace(rc.straight(testdata), [2.5] * 27, [5.0] * 28), "overlap")


def duplicates(testdata: Path) -> list[Dataset]:
    slices = rc.new_series(rc.straight(testdata), "duplicates")
    again = rc.new_series(slices[5:8], "re-sent")  # same position and pixels, new UIDs
    for ds in again:
        ds.StudyInstanceUID, ds.SeriesInstanceUID = (
            slices[0].StudyInstanceUID,
            slices[0].SeriesInstanceUID,
        )
        ds.FrameOfReferenceUID = slices[0].FrameOfReferenceUID
        ds.InstanceNumber = int(ds.InstanceNumber) + 100
    return slices + again


def reversed_order(testdata: Path) -> list[Dataset]:
    slices = rc.new_series(rc.straight(testdata)[::-1], "reversed")
    return slices


def mixed_matrix(testdata: Path) -> list[Dataset]:
    slices = rc.straight(testdata)
    small = [rc.crop(ds, 256, 256) for ds in slices[:6]]
    return rc.new_series(slices + small, "mixed matrix")


def patient_position(name: str) -> Callable[[Path], list[Dataset]]:
    return lambda testdata: rc.read_series(testdata, rc.POSITIONS[name])


def oblique(testdata: Path) -> list[Dataset]:
    sagittal = rc.read_series(testdata, rc.POSITIONS["HFS"])
    return rc.new_series(rc.rotate(sagittal, rc.rotation(20, 15, 0)), "double oblique")


def mosaic(testdata: Path) -> list[Dataset]:
    slices = rc.read_series(testdata, rc.POSITIONS["HFS"])[:4]
    for ds in slices:
        ds.ImageType = [*ds.ImageType, "MOSAIC"]
    return rc.new_series(slices, "mosaic")


def ambiguous_repeat(testdata: Path) -> list[Dataset]:
    """Two frames at one position, different pixels, nothing else different."""
    both = rc.repeat_at_same_positions(rc.straight(testdata)[:6], None, ("", ""))
    for ds in both:
        ds.ContentTime = ds.AcquisitionTime = "100000.000"
    return rc.new_series(both, "ambiguous")


def shifted_in_plane(testdata: Path) -> list[Dataset]:
    slices = rc.new_series(rc.straight(testdata)[:12], "shifted")
    rc.set_position(slices[6], rc.floats(slices[6].ImagePositionPatient) + np.array([2.0, 0, 0]))
    return slices


def invalid_attributes(testdata: Path) -> list[Dataset]:
    """What real scanners write: a StudyDate of ***, an over-long SH, a date with a wrong VR,
    and a ReferencedStudySequence (whose "instance" is the Study Instance UID)."""
    slices = rc.new_series(rc.straight(testdata)[:8], "invalid attributes")
    for ds in slices:
        ds.StudyDate = "***"
        ds.StudyID = "X" * 40
        ds.add(DataElement(0x00100030, "LO", "unknown"))  # PatientBirthDate, VR DA
        ref = Dataset()
        ref.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"  # Detached Study Management
        ref.ReferencedSOPInstanceUID = ds.StudyInstanceUID
        ds.ReferencedStudySequence = [ref]
    return slices


def tilt_between_stacks(testdata: Path) -> list[Dataset]:
    """Two acquisitions in one series, the second tilted: one stack each."""
    straight = rc.straight(testdata)[:14]
    tilted = rc.respace(_tilted(testdata), [5.0] * 13)
    for ds in tilted:
        ds.AcquisitionNumber = 2
    return rc.new_series(straight + tilted, "tilt differs between stacks")


PROCESSED: dict[str, Pattern] = {
    "two regimes, untilted": Pattern(
        two_regimes(rc.straight, 13, 13), spacing="13 x 4.00 mm + 1 x 5.10 mm + 13 x 7.00 mm"
    ),
    "two regimes, gantry tilt": Pattern(
        two_regimes(_tilted, 23, 17), spacing="23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm"
    ),
    "irregular spacing": Pattern(irregular, chosen_frames=20),
    "overlapping slices": Pattern(overlapping, spacing="uniform 2.50 mm"),
    "one missing slice, interpolated": Pattern(
        rc.missing(10), rule={"interpolate_gaps_mm": 10.0}, chosen_frames=27, notes=1
    ),
    "two missing slices, interpolated": Pattern(
        rc.missing(10, 11), rule={"interpolate_gaps_mm": 15.0}, chosen_frames=26, notes=1
    ),
    "localizer inside the series": Pattern(rc.with_localizer, stacks=2, chosen_frames=28),
    "two acquisitions by AcquisitionNumber": Pattern(
        rc.repeated("AcquisitionNumber", ("1", "2")), stacks=2, chosen_frames=12
    ),
    "two acquisitions by TemporalPositionIdentifier": Pattern(
        rc.repeated("TemporalPositionIdentifier", ("1", "2")), stacks=2, chosen_frames=12
    ),
    "dynamic told apart only by ContentTime": Pattern(
        rc.repeated(None, ("", "")), stacks=2, chosen_frames=12
    ),
    "duplicate instances": Pattern(duplicates, chosen_frames=28, notes=3),
    "reversed order": Pattern(reversed_order, spacing="uniform 5.00 mm"),
    "mixed matrix sizes": Pattern(mixed_matrix, stacks=2, chosen_frames=28),
    "tilt differs between stacks": Pattern(tilt_between_stacks, stacks=2, chosen_frames=14),
    "invalid source attributes": Pattern(invalid_attributes, chosen_frames=8, repairs=3),
    "sagittal MR, HFS": Pattern(patient_position("HFS"), MR_BANDS, spacing="uniform 4.80 mm"),
    "sagittal MR, HFP": Pattern(patient_position("HFP"), MR_BANDS, spacing="uniform 4.80 mm"),
    "sagittal MR, HFDR": Pattern(patient_position("HFDR"), MR_BANDS, spacing="uniform 4.80 mm"),
    "sagittal MR, HFDL": Pattern(patient_position("HFDL"), MR_BANDS, spacing="uniform 4.80 mm"),
    "double-oblique MR": Pattern(oblique, MR_BANDS, spacing="uniform 4.80 mm"),
}

REFUSED: dict[str, tuple[Callable[[Path], list[Dataset]], dict[str, Any], str]] = {
    "one missing slice": (
        rc.missing(10),
        {},
        "stack 1, axial, 512x512, 27 frames: slices missing between instance 10 (at 741.21 mm)"
        " and instance 12 (at 751.21 mm) along the slice normal: a gap of 10.00 mm (about 1"
        " slice of 5.00 mm) where the slices' thickness (5.00 mm x tolerance 1.5) allows 7.50"
        " mm; a rule may allow interpolation across such gaps (interpolate_gaps_mm)",
    ),
    "two missing slices": (
        rc.missing(10, 11),
        {"interpolate_gaps_mm": 10.0},
        "stack 1, axial, 512x512, 26 frames: slices missing between instance 10 (at 741.21 mm)"
        " and instance 13 (at 756.21 mm) along the slice normal: a gap of 15.00 mm (about 2"
        " slices of 5.00 mm) where the slices' thickness (5.00 mm x tolerance 1.5) allows 7.50"
        " mm; a rule may allow interpolation across such gaps (interpolate_gaps_mm)",
    ),
    "frames at one position, nothing tells them apart": (
        ambiguous_repeat,
        {},
        "stack 1, axial, 512x512, 12 frames: two frames share one slice position: instance 1"
        " and instance 7 at 696.21 mm, with different pixel data and nothing that tells them"
        " apart (TemporalPositionIdentifier, TemporalPositionIndex, AcquisitionNumber,"
        " EchoNumbers, EffectiveEchoTime, DiffusionBValue, DiffusionGradientOrientation,"
        " ImageType and ContentTime/AcquisitionTime are equal)",
    ),
    "slice origins off one line": (
        shifted_in_plane,
        {},
        "stack 1, axial, 512x512, 12 frames: slice origins do not lie on one line: instance 7"
        " is 2.00 mm off the line from instance 1 to instance 12 (the in-plane shift, or gantry"
        " tilt, changes within the stack)",
    ),
    "Siemens mosaic": (
        mosaic,
        {},
        "stack 1, sagittal, 256x256, 4 frames: Siemens mosaic (ImageType MOSAIC /"
        " NumberOfImagesInMosaic): the slices are tiled in one image; the node does not"
        " demosaic, so it is not one volume",
    ),
}


def written(build: Callable[[Path], list[Dataset]], testdata: Path, folder: Path) -> list[Path]:
    return rc.write(build(testdata), folder)


@pytest.mark.parametrize("name", list(REFUSED))
def test_refused_pattern_says_where_and_why(name: str, testdata: Path, tmp_path: Path) -> None:
    build, rule, text = REFUSED[name]
    paths = written(build, testdata, tmp_path / "in")
    with pytest.raises(VolumeError) as refused:
        load_series(paths, **rule)
    assert str(refused.value) == text


@pytest.fixture(scope="module")
def models_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    build_model(root, "ct", "torchscript", threshold_hu=CT_BANDS)
    build_model(root, "mr", "torchscript", threshold_hu=MR_BANDS)
    return root


def _along(ds: Dataset) -> float:
    return float(rc.floats(ds.ImagePositionPatient) @ rc.normal(ds))


def _extents(datasets: list[Dataset]) -> dict[str, float]:
    """Each frame's real extent along the normal, computed here from the source files."""
    ordered = sorted(datasets, key=_along)
    s = np.array([_along(ds) for ds in ordered])
    gaps = np.diff(s)
    if len(gaps) == 0:
        return {str(ordered[0].SOPInstanceUID): float(ordered[0].SliceThickness)}
    ext = np.concatenate([[gaps[0]], (gaps[:-1] + gaps[1:]) / 2, [gaps[-1]]])
    return {str(ds.SOPInstanceUID): float(e) for ds, e in zip(ordered, ext, strict=True)}


def _hu(ds: Dataset) -> np.ndarray:
    slope = float(getattr(ds, "RescaleSlope", 1))
    return ds.pixel_array * slope + float(getattr(ds, "RescaleIntercept", 0))


def _pixel_points(ds: Dataset, mask: np.ndarray) -> np.ndarray:
    """Patient coordinates of the mask's pixels, placed by the source frame's own geometry."""
    iop = rc.floats(ds.ImageOrientationPatient)
    dy, dx = (float(v) for v in ds.PixelSpacing)
    rows, cols = np.nonzero(mask)
    origin = rc.floats(ds.ImagePositionPatient)
    return origin + np.outer(cols * dx, iop[:3]) + np.outer(rows * dy, iop[3:])


def seg_frames(
    seg: hd.seg.Segmentation, sources: dict[str, Dataset]
) -> Iterator[tuple[np.ndarray, np.ndarray, Dataset, int, float]]:
    """Each SEG frame with its own ImagePositionPatient, its source frame, segment number and
    area (mm²), after checking that it lies on the source frame's plane (within 0.01 mm)."""
    pixels = seg.pixel_array.reshape(int(seg.NumberOfFrames), seg.Rows, seg.Columns)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence, strict=True):
        [source] = item.DerivationImageSequence[0].SourceImageSequence
        ds = sources[source.ReferencedSOPInstanceUID]
        ipp = rc.floats(item.PlanePositionSequence[0].ImagePositionPatient)
        np.testing.assert_allclose(ipp, rc.floats(ds.ImagePositionPatient), atol=0.01)
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        dy, dx = (float(v) for v in ds.PixelSpacing)
        yield frame, ipp, ds, number, float(frame.sum()) * dx * dy


@pytest.mark.parametrize("name", list(PROCESSED))
def test_processed_pattern_lands_on_its_source_frames(
    name: str, testdata: Path, tmp_path: Path, models_root: Path
) -> None:
    pattern = PROCESSED[name]
    paths = written(pattern.build, testdata, tmp_path / "in")
    model = "mr" if pattern.bands == MR_BANDS else "ct"
    job = run_model(models_root, model, paths, tmp_path / "results", **pattern.rule)
    summary = job.to_json()  # as stored on the job row
    [series] = summary["series"]
    assert len(series["stacks"]) == pattern.stacks, series["stacks"]
    [chosen] = [s for s in series["stacks"] if s["chosen"]]
    if pattern.spacing is not None:
        assert chosen["spacing"] == pattern.spacing
    if pattern.chosen_frames is not None:
        assert chosen["frames"] == pattern.chosen_frames
    assert len(chosen["notes"]) == pattern.notes, chosen["notes"]

    sources = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in paths)}
    manifest = ModelCache(models_root, "cpu").get(model).manifest
    out = build_results(
        job,
        manifest,
        {"default": ProfileSettings()},
        dict(zip(sources, paths, strict=True)),
        at=datetime.now(UTC),
    ).to_json()
    [seg_obj, sr_obj] = out["objects"]["default"]
    assert len(out["source_repairs"]) == pattern.repairs, out["source_repairs"]
    for obj in (seg_obj, sr_obj):
        assert dciodvfy_errors(Path(obj["path"])) == [], obj["kind"]
    seg = hd.seg.segread(seg_obj["path"])
    with np.load(Path(summary["path"]) / series["mask"]) as npz:
        saved = {key: npz[key] for key in npz.files}
    stack_uids = set(saved["sop_instance_uids"].tolist())
    assert chosen["spacing"] is not None
    assert len(stack_uids) == chosen["frames"]
    referenced = {
        ref.ReferencedSOPInstanceUID
        for s in seg.ReferencedSeriesSequence
        for ref in s.ReferencedInstanceSequence
    }
    assert referenced == stack_uids  # every source frame of the stack, nothing else

    # SEG frames on their source planes; areas from the source geometry; centroids where a
    # viewer puts the SEG's pixels (its own frame geometry)
    shared = seg.SharedFunctionalGroupsSequence[0]
    seg_iop = rc.floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
    seg_dy, seg_dx = (float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing)
    areas: dict[int, dict[str, float]] = {}
    seg_points: dict[int, list[np.ndarray]] = {}
    for frame, ipp, ds, number, area in seg_frames(seg, sources):
        areas.setdefault(number, {})[str(ds.SOPInstanceUID)] = area
        rows, cols = np.nonzero(frame)
        seg_points.setdefault(number, []).append(
            ipp + np.outer(cols * seg_dx, seg_iop[:3]) + np.outer(rows * seg_dy, seg_iop[3:])
        )

    stack = [sources[str(u)] for u in saved["sop_instance_uids"]]
    extents = _extents(stack)
    iop = rc.floats(stack[0].ImageOrientationPatient)
    axes = np.stack([iop[:3], iop[3:], rc.normal(stack[0])])
    dy, dx = (float(v) for v in stack[0].PixelSpacing)
    voxel = np.array([dx, dy, float(np.mean(list(extents.values())))])
    for number in range(1, len(pattern.bands) + 1):
        # the mask placed by the source files' geometry, read here with pydicom
        mask_points = np.concatenate(
            [
                _pixel_points(ds, labels == number)
                for ds, labels in zip(stack, saved["labels"], strict=True)
            ]
        )
        got = np.concatenate(seg_points.get(number, [np.zeros((0, 3))]))
        assert len(got) == len(mask_points)
        if len(got):
            off = np.abs(axes @ (got.mean(axis=0) - mask_points.mean(axis=0))) / voxel
            assert (off <= 0.5).all(), (number, off)
        # and the mask is the model's answer on the true positions: the independent threshold
        # of each source frame, exactly where the model grid is the source grid
        truth = np.stack(
            [band_labels(np.clip(_hu(ds), *WINDOW), pattern.bands) == number for ds in stack]
        )
        pred = saved["labels"] == number
        dice = 2 * (truth & pred).sum() / max(1, truth.sum() + pred.sum())
        assert dice >= (0.999 if chosen["spacing"].startswith("uniform") else 0.9), (number, dice)

    sr = hd.sr.srread(sr_obj["path"])
    groups = sr.content.get_volumetric_roi_measurement_groups()
    for number, group in enumerate(groups, start=1):
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        expected_ml = sum(a * extents[u] for u, a in areas[number].items()) / 1000
        assert volume.value == pytest.approx(expected_ml, rel=0.01, abs=1e-3), number


def test_enhanced_multiframe_with_two_stacks_is_split_by_stack(
    testdata: Path, tmp_path: Path
) -> None:
    """A Legacy Converted Enhanced CT made by highdicom from real slices: two acquisitions at the
    same positions in one instance, told apart by the frames' Stack ID."""
    both = rc.new_series(
        rc.repeat_at_same_positions(rc.straight(testdata)[:8], None, ("", "")), "mf"
    )
    with quiet_person_names():
        mf = hd.legacy.LegacyConvertedEnhancedCTImage(
            both, both[0].SeriesInstanceUID, 1, hd.UID(), 1
        )
    for k, item in enumerate(mf.PerFrameFunctionalGroupsSequence):
        item.FrameContentSequence[0].StackID = "1" if k < 8 else "2"
    path = tmp_path / "mf.dcm"
    mf.save_as(path, enforce_file_format=True)
    vol = load_series([path])
    assert [s["frames"] for s in vol.stacks] == [8, 8]
    assert sorted(ref.frame_number for ref in vol.frames) in (list(range(1, 9)), list(range(9, 17)))
    assert vol.spacing == "uniform 5.00 mm"


@pytest.mark.filterwarnings("ignore::UserWarning:highdicom.*")
def test_ct_tissue_end_to_end_on_tilted_ct_with_two_spacings(
    testdata: Path, tmp_path: Path
) -> None:
    """The head CT that used to fail ("slices missing: a gap of 7.00 mm after slice 23"): gantry
    tilt, 4 mm then 7 mm slices with a 5.1 mm step between, through ``dicom-node serve`` with
    the shipped ct-tissue model, results to storescp; and ``models evaluate`` on the same
    series."""
    series_dir = tmp_path / "series"
    written(PROCESSED["two regimes, gantry tilt"].build, testdata, series_dir)
    sources = {str(ds.SOPInstanceUID): ds for ds in (dcmread(p) for p in series_dir.iterdir())}
    archive = tmp_path / "archive"
    with storescp(archive) as archive_port:
        s = Scenario(tmp_path / "node", series_dir, broker=None, port=free_port())
        s.route_to("ct-tissue", MODELS, extra=destination("archive", "STORESCP", archive_port))
        try:
            s.node.start()
            uid = s.send()
            job = s.wait_state(uid, JobState.DONE, 300)
        finally:
            s.close()
        received = {str(dcmread(p).SOPClassUID): p for p in archive.iterdir()}
    assert job.result is not None
    [series] = job.result["series"]
    assert series["spacing"] == "23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm"
    assert series["tilt_deg"] == pytest.approx(18.5, abs=0.1)
    seg_path = received["1.2.840.10008.5.1.4.1.1.66.4"]
    sr_path = received["1.2.840.10008.5.1.4.1.1.88.33"]
    for path in (seg_path, sr_path):
        assert dciodvfy_errors(path) == [], path.name
    seg = hd.seg.segread(seg_path)
    extents = _extents(list(sources.values()))
    expected_ml: dict[int, float] = {}
    for _, _, ds, number, area in seg_frames(seg, sources):
        expected_ml[number] = (
            expected_ml.get(number, 0.0) + area * extents[ds.SOPInstanceUID] / 1000
        )
    sr = hd.sr.srread(sr_path)
    for group in sr.content.get_volumetric_roi_measurement_groups():
        [number] = group.referenced_segment.referenced_segment_numbers
        [volume] = group.get_measurements(name=codes.SCT.Volume)
        assert float(volume.value) == pytest.approx(
            expected_ml.get(int(number), 0.0), rel=0.01, abs=1e-3
        )
    assert expected_ml[3] > 0  # bone: the phantom's skull

    out = tmp_path / "report"
    done = cli(
        "models", "evaluate", "ct-tissue", "--cases", str(series_dir), "--out", str(out),
        env={"DICOM_NODE_MODELS__ROOT": str(MODELS), "DICOM_NODE_MODELS__DEVICE": "cpu"},
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "evaluation.json").read_text())
    assert [case["frames"] for case in report["cases"]] == [42]
    assert report["labels"]["bone"]["dice"] >= 0.8, report["labels"]["bone"]


def test_enhanced_multiframe_mr_is_routed_by_its_functional_group_orientation(
    testdata: Path, node: RunningNode
) -> None:
    """Its orientation lives in the functional groups, not at the top level: the rules see the
    stacks split from the per-frame groups, so a rule on orientation takes it."""
    slices = rc.new_series(rc.read_series(testdata, rc.POSITIONS["HFS"]), "enhanced sagittal")
    with quiet_person_names():
        mf = hd.legacy.LegacyConvertedEnhancedMRImage(
            slices, slices[0].SeriesInstanceUID, 1, hd.UID(), 1
        )
    assert "ImageOrientationPatient" not in mf
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(mf.SOPClassUID, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
    assert assoc.is_established
    try:
        assert assoc.send_c_store(mf).Status == 0
    finally:
        assoc.release()
    uid = str(mf.StudyInstanceUID)
    with node.engine.connect() as conn:
        [facts] = study_stack_facts(conn, uid, node.settings.storage.root) or []
    assert facts.orientation == "SAGITTAL" and facts.slice_thickness_mm == pytest.approx(4.0)
    assert facts.instances == 35
    rule = RuleSettings(
        name="mr-sag", models=("m",), match=RuleMatch(modality=("MR",), orientation=("SAGITTAL",))
    )
    [outcome] = evaluate([rule], [facts])
    assert outcome.chosen == (facts.series_uid,)
    [verdict] = outcome.stacks
    assert verdict.spacing == "uniform 4.80 mm" and verdict.label.startswith("stack 1, sagittal")
    with node.engine.connect() as conn:
        stored = [
            node.settings.storage.root / p for p in conn.execute(select(Instance.path)).scalars()
        ]
    vol = load_series(stored)
    assert len(vol.frames) == 35 and vol.spacing == "uniform 4.80 mm"
