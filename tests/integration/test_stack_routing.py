"""Rules select stacks, not series: one study of real slices re-composed into three series (a
localizer inside a CT series; two acquisitions at the same positions; a series with a slice
missing), routed by the node itself on completion.

- every stack is a candidate of its own: the localizer is not chosen, each acquisition gets its
  own job, and the series with the gap gets a job made FAILED at once with the exact refusal;
- the refused stack does not stop the others: each QUEUED job runs on exactly its stack's frames;
- ``dicom-node rules test``, ``dicom-node jobs``, the study timeline and the audit log all say
  which stack, its slice count and spacing, and why it was or was not chosen.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.admin.read.timeline import timeline
from dicom_node.db.models import AuditEvent, Job
from dicom_node.domain import JobState
from tests.helpers import (
    RunningNode,
    cli,
    config_for,
    node_settings,
    send_datasets,
    start_node,
    wait_for,
)
from tests.models import CT_BANDS, build_model
from tests.recompose import missing, repeated, with_localizer
from workers.runner import WorkerContext, execute

GAP = (
    "stack 1, axial, 512x512, 27 frames: slices missing between instance 10 (at 741.21 mm)"
    " and instance 12 (at 751.21 mm) along the slice normal: a gap of 10.00 mm (about 1"
    " slice of 5.00 mm) where the slices' thickness (5.00 mm x tolerance 1.5) allows 7.50"
    " mm; a rule may allow interpolation across such gaps (interpolate_gaps_mm)"
)


def one_study(testdata: Path) -> tuple[list[Dataset], dict[str, str]]:
    """The three series in one study; returns the datasets and series UID -> its part's name."""
    study = generate_uid()
    parts = {
        "localizer + CT": with_localizer(testdata),
        "two acquisitions": repeated("AcquisitionNumber", ("1", "2"))(testdata),
        "slice missing": missing(10)(testdata),
    }
    names = {}
    out: list[Dataset] = []
    for number, (name, datasets) in enumerate(parts.items(), start=1):
        for ds in datasets:
            ds.StudyInstanceUID = study
            ds.SeriesNumber = number
        names[str(datasets[0].SeriesInstanceUID)] = name
        out += datasets
    return out, names


@pytest.fixture
def routed(tmp_path: Path) -> Iterator[RunningNode]:
    build_model(tmp_path / "models", "ct", "torchscript", threshold_hu=CT_BANDS)
    rule = {"name": "ct", "models": ["ct"], "select": "all", "match": {"modality": ["CT"]}}
    settings = node_settings(
        tmp_path,
        rules=[{**rule, "match": {**rule["match"], "min_slices": 10}}],
        models={"root": str(tmp_path / "models"), "device": "cpu"},
    )
    running = start_node(settings)
    yield running
    running.stop()


def test_rules_choose_stacks_and_a_refused_stack_does_not_stop_the_others(
    routed: RunningNode, testdata: Path, tmp_path: Path
) -> None:
    datasets, names = one_study(testdata)
    assert set(send_datasets(routed.port, datasets)) == {0}
    uid = str(datasets[0].StudyInstanceUID)

    def jobs() -> list[Job]:
        with routed.engine.connect() as conn:
            return list(conn.execute(select(Job).where(Job.study_uid == uid)).all())  # type: ignore[arg-type]

    wait_for(lambda: len(jobs()) == 4, 30, "four jobs made on completion")
    by_series: dict[str, list[Job]] = {}
    for job in jobs():
        [series] = job.series_uids
        by_series.setdefault(names[series], []).append(job)

    [ct] = by_series["localizer + CT"]
    assert ct.state == JobState.QUEUED
    assert ct.stack["number"] == 2 and ct.stack["frames"] == 28  # stack 1 is the localizer
    assert ct.stack["spacing"] == "uniform 5.00 mm"
    acquisitions = sorted(by_series["two acquisitions"], key=lambda j: j.stack["number"])
    assert [(j.state, j.stack["number"], j.stack["frames"]) for j in acquisitions] == [
        ("QUEUED", 1, 12),
        ("QUEUED", 2, 12),
    ]
    assert "AcquisitionNumber 1" in acquisitions[0].stack["label"]
    [gap] = by_series["slice missing"]
    assert gap.state == JobState.FAILED and gap.error == GAP
    with routed.engine.connect() as conn:
        failed = conn.execute(
            select(AuditEvent.details).where(
                AuditEvent.entity_id == gap.id, AuditEvent.event_type == "job.failed"
            )
        ).scalar_one()
    assert failed["reason"] == GAP

    # each QUEUED job runs on exactly the frames of its stack
    ctx = WorkerContext(routed.settings)
    try:
        frames: dict[str, set[str]] = {}
        for job in (ct, *acquisitions):
            assert execute(ctx, job.id, "test-worker") is JobState.RESULTS_READY
            with routed.engine.connect() as conn:
                result = conn.execute(select(Job.result).where(Job.id == job.id)).scalar_one()
            [series] = result["series"]
            saved = np.load(Path(result["path"]) / series["mask"])
            frames[job.id] = {str(u) for u in saved["sop_instance_uids"]}
            saved.close()
            assert len(frames[job.id]) == job.stack["frames"]
    finally:
        ctx.engine.dispose()
    first, second = (frames[j.id] for j in acquisitions)
    assert not first & second
    by_uid = {str(ds.SOPInstanceUID): ds for ds in datasets}
    assert {by_uid[u].AcquisitionNumber for u in first} == {1}
    assert {by_uid[u].AcquisitionNumber for u in second} == {2}
    assert all("LOCALIZER" not in by_uid[u].ImageType for u in frames[ct.id])

    # the admin's views: rules test, jobs, the timeline
    cfg = config_for(routed, tmp_path)
    cfg.write_text(
        cfg.read_text()
        + '[[rules]]\nname = "ct"\nmodels = ["ct"]\nselect = "all"\n'
        + '[rules.match]\nmodality = ["CT"]\nmin_slices = 10\n'
    )
    done = cli("rules", "test", uid, "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    [outcome] = json.loads(done.stdout)
    verdicts = [
        (names[v["series_uid"]], v["stack"], v["slices"], v["verdict"]) for v in outcome["stacks"]
    ]
    assert verdicts == [
        ("localizer + CT", 1, 1, "not chosen"),
        ("localizer + CT", 2, 28, "chosen"),
        ("two acquisitions", 1, 12, "chosen"),
        ("two acquisitions", 2, 12, "chosen"),
        ("slice missing", 1, 27, "refused"),
    ]
    why = {(names[v["series_uid"]], v["stack"]): v for v in outcome["stacks"]}
    assert "LOCALIZER" in why["localizer + CT", 1]["why"]
    assert why["localizer + CT", 2]["spacing"] == "uniform 5.00 mm"
    assert why["slice missing", 1]["why"] == f"refused: {GAP}"
    text = cli("rules", "test", uid, config=cfg).stdout
    assert "rule ct: runs ct (routine); 1 refused (FAILED jobs)" in text
    assert "stack 2, axial, 512x512, 28 frames, uniform 5.00 mm: chosen" in text
    assert f"! {gap.series_uids[0]}" in text

    listed = cli("jobs", config=cfg).stdout
    assert f"error: {GAP}" in listed

    found = timeline(routed.engine, routed.settings, uid, show_accession=False)
    assert found is not None
    shown = asdict(found)
    [rule] = shown["rules"]
    assert [v["verdict"] for v in rule["stacks"]] == [v[3] for v in verdicts]
    by_job = {j["job_id"]: j for j in shown["jobs"]}
    assert by_job[gap.id]["error"] == GAP
    assert by_job[ct.id]["stack"]["label"] == "stack 2, axial, 512x512, 28 frames"
