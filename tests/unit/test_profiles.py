"""Result profiles (``workers.results.build.build_results``): on a real pipeline run of a tiny
threshold model over real CT slices, each profile gets the objects it asks for, in order; one
SEG variant is built once however many profiles share it; key images are Secondary Captures of
the source frames with the most label; a confidence map rides with every SEG when the rule asks."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread

from dicom_node.results import JobSummary, ObjectKind
from dicom_node.settings import ProfileSettings
from tests.models import THRESHOLD_HU, build_model
from tests.recompose import TILTED
from workers.inference.pipeline import JobInput, SeriesInput, run
from workers.inference.runners import ModelCache
from workers.results.build import build_results

AT = datetime(2026, 12, 3, tzinfo=UTC)
PROFILES = {
    "default": ProfileSettings(),
    "legacy": ProfileSettings(key_images=3),
    "slim": ProfileSettings(sr=False, omit_empty_frames=True),
    "viewer3d": ProfileSettings(sr_class="comprehensive3d"),
}


@pytest.fixture(scope="module")
def ran(
    tmp_path_factory: pytest.TempPathFactory, testdata: Path
) -> tuple[JobSummary, ModelCache, dict[str, Path]]:
    root = tmp_path_factory.mktemp("models")
    build_model(root, "bone", "torchscript")
    files = [p for p in (testdata / TILTED).iterdir() if p.name != "DIRFILE"]
    files.sort(key=lambda p: int(dcmread(p, stop_before_pixels=True).InstanceNumber))
    files = files[:12]  # 12 neighbouring slices, sent in any order
    random.Random(5).shuffle(files)
    cache = ModelCache(root, "cpu")
    job = JobInput("job-p", 1, "bone", (SeriesInput("1.2.3", tuple(files)),), confidence=True)
    summary = run(job, cache, tmp_path_factory.mktemp("results"))
    paths = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in files}
    return summary, cache, paths


def test_each_profile_gets_what_it_asks_for(
    ran: tuple[JobSummary, ModelCache, dict[str, Path]],
) -> None:
    summary, cache, paths = ran
    manifest = cache.get("bone").manifest
    built = build_results(summary, manifest, PROFILES, paths, at=AT, confidence=True)
    kinds = {name: [o.kind for o in objs] for name, objs in built.objects.items()}
    seg, pm, sr, sc = ObjectKind.SEG, ObjectKind.PM, ObjectKind.SR, ObjectKind.SC
    assert kinds == {
        "default": [seg, pm, sr],
        "legacy": [seg, pm, sr, sc, sc, sc],
        "slim": [seg, pm],
        "viewer3d": [seg, pm, sr],
    }
    by = {name: {o.kind: o for o in objs} for name, objs in built.objects.items()}
    # one variant, one object: default, legacy and viewer3d share the SEG; slim omits empty frames
    assert by["default"][seg] == by["legacy"][seg] == by["viewer3d"][seg]
    assert by["slim"][seg].sop_instance_uid != by["default"][seg].sop_instance_uid
    assert by["viewer3d"][sr].sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D
    assert by["default"][sr].sop_class_uid == "1.2.840.10008.5.1.4.1.1.88.33"
    full, slim = (dcmread(by[p][seg].path) for p in ("default", "slim"))
    assert int(full.NumberOfFrames) == len(paths)
    with_bone = sum(n > 0 for n in bone_counts(paths).values())
    assert int(slim.NumberOfFrames) == with_bone  # a frame without bone is left out
    for obj in built.objects["legacy"]:
        assert Path(obj.path).is_file() and obj.series_uid == "1.2.3"


def bone_counts(paths: dict[str, Path]) -> dict[str, int]:
    """Independently: the bone voxels on each source frame, from its own pixels."""
    counts = {}
    for uid, path in paths.items():
        ds = dcmread(path)
        hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        counts[uid] = int(np.count_nonzero(hu > THRESHOLD_HU))
    return counts


def test_key_images_are_the_frames_with_the_most_label(
    ran: tuple[JobSummary, ModelCache, dict[str, Path]],
) -> None:
    summary, cache, paths = ran
    manifest = cache.get("bone").manifest
    built = build_results(summary, manifest, {"legacy": PROFILES["legacy"]}, paths, at=AT)
    keys = [dcmread(o.path) for o in built.objects["legacy"] if o.kind is ObjectKind.SC]
    assert all(k.SOPClassUID.startswith("1.2.840.10008.5.1.4.1.1.7") for k in keys)
    sources = {str(k.SourceImageSequence[0].ReferencedSOPInstanceUID) for k in keys}
    counts = bone_counts(paths)
    assert sources == set(sorted(counts, key=counts.__getitem__, reverse=True)[:3])
