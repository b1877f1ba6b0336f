"""The read models on SQLite (``dicom_node.admin.read``): what each view shows of rows put
straight into the index, with no node running. The same rows reach the CLI and the web."""

from __future__ import annotations

import csv
import io
from dataclasses import asdict
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, insert, update

from dicom_node.admin.read import audit, dashboard, destinations, jobs, models, studies, timeline
from dicom_node.admin.read.common import percentile, seconds, status_hex
from dicom_node.db.models import (
    Association,
    AuditEvent,
    DestinationCircuit,
    Export,
    Instance,
    Series,
    Study,
    StudyAssociation,
    utcnow,
)
from dicom_node.domain import phi_hash
from dicom_node.results import JobSummary, LabelMeasure, SeriesSummary
from dicom_node.settings import DestinationSettings, Settings
from tests.rows import add_job, add_study, sqlite_index

_NOW = utcnow().replace(microsecond=0)
# two hours ago, but not before today's UTC midnight: rows added at "now" fall on the same day
# as these (the daily trend counts them together), even just after midnight
T0 = max(_NOW - timedelta(hours=2), _NOW.replace(hour=0, minute=0, second=0))
STUDY = "1.2.826.0.1.3680043.8.498.1"
OTHER = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.1.1"


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def summary(voxels: int = 1000, volume: float = 12.5) -> dict[str, object]:
    label = LabelMeasure(value=1, name="bone", voxels=voxels, volume_ml=volume, mean=700.0)
    series = SeriesSummary(series_uid=SERIES, mask="m.npz", frames=4, labels=(label,), timings_s={})
    return JobSummary("threshold", "1", "0" * 64, "cpu", 1, "/r", (series,)).to_json()


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """Study A: 2 series from CTSCANNER, completed at +12 s, one DONE job whose SEG was sent
    to pacs (sending +20 s, delivered +21.5 s) and whose SR FAILED to archive. Study B: still
    receiving, from another AE, with a FAILED job."""
    engine = sqlite_index(tmp_path)
    study_a = add_study(engine, STUDY)
    study_b = add_study(engine, OTHER, state="RECEIVING")
    with engine.begin() as conn:
        conn.execute(
            update(Study)
            .where(Study.id == study_a)
            .values(
                first_received=at(0),
                last_received=at(10),
                completed_at=at(12),
                completion_reason="settled after release",
                accession_number="ACC-42",
                accession_hash=phi_hash("ACC-42"),
                study_date="20150206",
            )
        )
        conn.execute(
            update(Study)
            .where(Study.id == study_b)
            .values(first_received=at(30), last_received=at(40))
        )
        for n, (uid, ae) in enumerate(((STUDY, "CTSCANNER"), (OTHER, "MRSCANNER"))):
            conn.execute(
                insert(Association),
                {
                    "id": f"assoc-{n}",
                    "calling_ae": ae,
                    "called_ae": "DICOMNODE",
                    "peer_host": "127.0.0.1",
                    "peer_port": 4000 + n,
                    "pid": 1,
                    "started_at": at(0),
                },
            )
            conn.execute(
                insert(StudyAssociation),
                {"study_id": study_a if uid == STUDY else study_b, "association_id": f"assoc-{n}"},
            )
        for number, (uid, modality) in enumerate(((SERIES, "CT"), (SERIES + ".2", "SR")), 1):
            series_id = conn.execute(
                insert(Series).returning(Series.id),
                {
                    "series_uid": uid,
                    "study_id": study_a,
                    "modality": modality,
                    "series_number": number,
                    "first_received": at(0),
                    "last_received": at(10),
                },
            ).scalar_one()
            for i in range(4 if modality == "CT" else 1):
                conn.execute(
                    insert(Instance),
                    {
                        "sop_instance_uid": f"{uid}.{i}",
                        "series_id": series_id,
                        "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                        "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                        "path": f"x/{uid}.{i}",
                        "size_bytes": 1000,
                        "received_at": at(i * 3),
                        "association_id": "assoc-0",
                    },
                )
    add_job(
        engine,
        "job-a",
        study_uid=STUDY,
        state="DONE",
        series_uids=[SERIES],
        created_at=at(12),
        queued_at=at(12.5),
        started_at=at(13),
        results_ready_at=at(19),
        finished_at=at(22),
        result=summary(),
        model="threshold",
    )
    add_job(engine, "job-b", study_uid=OTHER, state="FAILED", error="no such model", attempts=3)
    with engine.begin() as conn:
        for xid, dest, kind, state, status in (
            ("x-seg", "pacs", "seg", "DELIVERED", 0x0000),
            ("x-sr", "archive", "sr", "FAILED", 0xA700),
        ):
            conn.execute(
                insert(Export),
                {
                    "id": xid,
                    "job_id": "job-a",
                    "study_uid": STUDY,
                    "destination": dest,
                    "kind": kind,
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
                    "sop_instance_uid": f"2.25.{len(xid)}{kind}",
                    "path": f"/r/{xid}.dcm",
                    "state": state,
                    "attempts": 1,
                    "max_attempts": 5,
                    "last_status": status,
                    "last_error": None if state == "DELIVERED" else "Out of resources",
                    "created_at": at(19.5),
                    "delivered_at": at(21.5) if state == "DELIVERED" else None,
                },
            )
        for event, entity_type, entity, s, details in (
            ("study.receiving", None, None, 0, {}),
            ("study.completed", None, None, 12, {"reason": "settled after release"}),
            ("job.running", "job", "job-a", 13, {}),
            ("export.sending", "export", "x-seg", 20, {"destination": "pacs"}),
            ("export.delivered", "export", "x-seg", 21.5, {"destination": "pacs"}),
            ("export.failed", "export", "x-sr", 21.8, {"destination": "archive", "reason": "A700"}),
        ):
            conn.execute(
                insert(AuditEvent),
                {
                    "at": at(s),
                    "event_type": event,
                    "actor": "system",
                    "study_uid": STUDY,
                    "entity_type": entity_type,
                    "entity_id": entity,
                    "details": details,
                },
            )
        conn.execute(
            insert(AuditEvent),
            {
                "at": at(50),
                "event_type": "user.login_failed",
                "actor": "=cmd|' /C calc'!A0",
                "details": {"client": "192.0.2.1"},
            },
        )
        conn.execute(
            insert(DestinationCircuit),
            {"destination": "archive", "state": "OPEN", "failures": 3, "opened_at": at(22)},
        )
    return engine


def settings() -> Settings:
    return Settings(
        destinations=[
            DestinationSettings(name="pacs", ae_title="PACS", host="10.0.0.1", port=104),
            DestinationSettings(name="archive", ae_title="ARCH", host="10.0.0.2", port=11112),
        ],
        rules=[{"name": "ct", "models": ["threshold"], "match": {"modality": ["CT"]}}],
    )


# --- common ---------------------------------------------------------------------------------


def test_durations_are_never_negative_and_none_stays_none() -> None:
    assert seconds(at(0), at(1.5)) == 1.5
    assert seconds(at(2), at(1)) == 0.0
    assert seconds(None, at(1)) is None and seconds(at(1), None) is None


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([3.0], 95) == 3.0
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        50.0,
        95.0,
        100.0,
    )


def test_statuses_are_written_as_the_standard_writes_them() -> None:
    assert status_hex(0xA700) == "0xA700"
    assert status_hex(0) == "0x0000"
    assert status_hex(None) is None


# --- studies --------------------------------------------------------------------------------


def test_a_study_row_counts_its_series_instances_senders_and_jobs(engine: Engine) -> None:
    rows = studies.studies(engine, studies.StudyFilter(), show_accession=False)
    assert [r.study_uid for r in rows] == [OTHER, STUDY]  # most recently received first
    a = rows[1]
    assert (a.series, a.instances, a.calling_aes) == (2, 5, ["CTSCANNER"])
    assert a.receive_s == 12.0
    assert [(j.model, j.state) for j in a.jobs] == [("threshold", "DONE")]
    assert a.accession is None and a.accession_hash == phi_hash("ACC-42")
    assert rows[0].receive_s is None  # not complete: no duration yet


def test_the_accession_number_shows_only_when_configured(engine: Engine) -> None:
    [row] = studies.studies(engine, studies.StudyFilter(state="complete"), show_accession=True)
    assert row.accession == "ACC-42"


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        (studies.StudyFilter(state="RECEIVING"), [OTHER]),
        (studies.StudyFilter(calling_ae=" CTSCANNER "), [STUDY]),
        (studies.StudyFilter(model="threshold"), [STUDY]),
        (studies.StudyFilter(model="m"), [OTHER]),
        (studies.StudyFilter(accession="ACC-42"), [STUDY]),  # found by its hash
        (studies.StudyFilter(accession="ACC-43"), []),
        (studies.StudyFilter(received_to=date.today() - timedelta(days=2)), []),
        (studies.StudyFilter(received_from=date.today() + timedelta(days=1)), []),
        (studies.StudyFilter(limit=1), [OTHER]),
    ],
)
def test_study_filters(engine: Engine, flt: studies.StudyFilter, expected: list[str]) -> None:
    assert [r.study_uid for r in studies.studies(engine, flt, show_accession=False)] == expected


# --- timeline -------------------------------------------------------------------------------


def test_the_timeline_has_each_stage_with_what_its_duration_measures(engine: Engine) -> None:
    t = timeline.timeline(engine, settings(), STUDY, show_accession=False)
    assert t is not None
    assert [(s.stage, s.duration_s, s.duration_of) for s in t.stages] == [
        ("received (first instance)", None, None),
        ("received (last instance)", 10.0, "receiving"),
        ("complete (settled after release)", 2.0, "quiet period after the last instance"),
    ]
    [job] = t.jobs
    assert [(s.stage, s.duration_s) for s in job.stages] == [
        ("queued", 0.5),
        ("running", 0.5),
        ("results ready", 6.0),
        ("finished (DONE)", 3.0),
    ]
    assert job.total_s == 22.0
    assert [(m.label, m.voxels, m.volume_ml) for m in job.measurements] == [("bone", 1000, 12.5)]


def test_a_re_run_and_a_re_send_are_in_the_timeline_and_measured_for_what_they_are(
    engine: Engine,
) -> None:
    """A re-run an admin asks for an hour later is measured from that request, not from the
    study's first instance; a re-send shows, with who asked, and the export duration says
    that it includes it."""
    add_job(
        engine,
        "job-rerun",
        study_uid=STUDY,
        state="DONE",
        series_uids=[SERIES],
        created_at=at(3600),
        queued_at=at(3600),
        started_at=at(3601),
        results_ready_at=at(3607),
        finished_at=at(3608),
        result=summary(),
        model="threshold",
    )
    with engine.begin() as conn:
        for event, entity, s, actor, details in (
            ("job.queued", "job-rerun", 3600, "cli:ann", {"reason": "re-run by cli:ann"}),
            ("export.resend", "x-sr", 3700, "ada", {"reason": "resend by ada"}),
            ("export.sending", "x-sr", 3701, "system", {"destination": "archive"}),
            ("export.delivered", "x-sr", 3702.5, "system", {"destination": "archive"}),
        ):
            conn.execute(
                insert(AuditEvent),
                {
                    "at": at(s),
                    "event_type": event,
                    "actor": actor,
                    "study_uid": STUDY,
                    "entity_type": "job" if entity.startswith("job") else "export",
                    "entity_id": entity,
                    "details": details,
                },
            )
    t = timeline.timeline(engine, settings(), STUDY, show_accession=False)
    assert t is not None
    first, rerun = t.jobs
    assert (first.total_of, first.total_s) == ("first instance to finished", 22.0)
    assert (rerun.total_of, rerun.total_s) == ("re-run to finished", 8.0)
    queued = rerun.stages[0]
    assert (queued.stage, queued.duration_s, queued.duration_of) == (
        "queued (re-run by cli:ann)",
        None,
        None,
    )
    assert first.stages[-1].duration_of == "export, re-sends included"
    entries = [(e.stage, e.actor, e.duration_s) for e in t.timeline]
    assert ("threshold: SR resend", "ada", None) in entries
    assert ("threshold: SR delivered", None, 1.5) in entries  # since its own sending
    assert entries.index(("threshold: SR resend", "ada", None)) > entries.index(
        ("threshold: queued (re-run by cli:ann)", None, None)
    )


def test_the_timeline_merges_stages_and_export_events_in_time_order(engine: Engine) -> None:
    t = timeline.timeline(engine, settings(), STUDY, show_accession=False)
    assert t is not None
    names = [e.stage for e in t.timeline]
    assert names == [
        "received (first instance)",
        "received (last instance)",
        "complete (settled after release)",
        "threshold: queued",
        "threshold: running",
        "threshold: results ready",
        "threshold: SEG sending",
        "threshold: SEG delivered",
        "threshold: SR failed",
        "threshold: finished (DONE)",
    ]
    delivered = t.timeline[names.index("threshold: SEG delivered")]
    assert (delivered.duration_s, delivered.duration_of, delivered.detail) == (
        1.5,
        "C-STORE",
        "pacs",
    )
    failed = t.timeline[names.index("threshold: SR failed")]
    assert failed.duration_s is None and failed.detail == "archive · A700"


def test_each_job_carries_its_exports_and_its_own_log(engine: Engine) -> None:
    t = timeline.timeline(engine, settings(), STUDY, show_accession=False)
    assert t is not None
    [job] = t.jobs
    assert [(x.kind, x.destination, x.state, x.last_status, x.send_s) for x in job.exports] == [
        ("seg", "pacs", "DELIVERED", "0x0000", 2.0),
        ("sr", "archive", "FAILED", "0xA700", None),
    ]
    assert [e.event for e in job.log] == [
        "job.running",
        "export.sending",
        "export.delivered",
        "export.failed",
    ]
    assert [e.event for e in job.export_attempts] == [e.event for e in job.log][1:]
    assert len(t.events) == 6  # every event of the study, study-level ones too


def test_the_timeline_lists_series_senders_and_the_rules_choice(engine: Engine) -> None:
    t = timeline.timeline(engine, settings(), STUDY, show_accession=True)
    assert t is not None
    assert (t.accession, t.calling_aes, t.study_date) == ("ACC-42", ["CTSCANNER"], "20150206")
    assert [(s.series_number, s.modality, s.instances) for s in t.series] == [
        (1, "CT", 4),
        (2, "SR", 1),
    ]
    [rule] = t.rules
    assert rule.rule == "ct" and rule.models == ["threshold"]


def test_no_timeline_for_a_study_the_index_does_not_hold(engine: Engine) -> None:
    assert timeline.timeline(engine, settings(), "1.2.3.4.5", show_accession=False) is None


def test_a_timeline_is_plain_json_once_converted(engine: Engine) -> None:
    import json  # noqa: PLC0415

    t = timeline.timeline(engine, settings(), STUDY, show_accession=False)
    assert t is not None
    again = json.loads(json.dumps(asdict(t)))
    assert again["jobs"][0]["exports"][0]["kind"] == "seg"


# --- jobs and exports -----------------------------------------------------------------------


def test_job_rows_and_their_filters(engine: Engine) -> None:
    rows = jobs.jobs(engine, jobs.JobFilter())
    assert {r.job_id for r in rows} == {"job-a", "job-b"}
    [a] = jobs.jobs(engine, jobs.JobFilter(state="done"))
    assert (a.run_s, a.priority, a.series_uids) == (6.0, "routine", [SERIES])
    [b] = jobs.jobs(engine, jobs.JobFilter(study_uid=OTHER))
    assert (b.state, b.error, b.run_s) == ("FAILED", "no such model", None)
    assert jobs.jobs(engine, jobs.JobFilter(model="nope")) == []
    assert len(jobs.jobs(engine, jobs.JobFilter(limit=1))) == 1


def test_a_stat_job_says_so(engine: Engine) -> None:
    add_job(engine, "job-stat", study_uid=STUDY, priority=0)
    [row] = jobs.jobs(engine, jobs.JobFilter(state="QUEUED"))
    assert row.priority == "stat"


def test_export_rows_and_their_filters(engine: Engine) -> None:
    assert {r.export_id for r in jobs.exports(engine, jobs.ExportFilter())} == {"x-seg", "x-sr"}
    [failed] = jobs.exports(engine, jobs.ExportFilter(state="failed"))
    assert (failed.destination, failed.last_status, failed.last_error) == (
        "archive",
        "0xA700",
        "Out of resources",
    )
    [seg] = jobs.exports(engine, jobs.ExportFilter(destination="pacs"))
    assert seg.kind == "seg" and seg.delivered_at is not None
    assert jobs.exports(engine, jobs.ExportFilter(job_id="job-b")) == []


# --- destinations ---------------------------------------------------------------------------


def test_destinations_show_their_states_and_circuit(engine: Engine) -> None:
    rows = {r.destination: r for r in destinations.destinations(engine, settings())}
    assert list(rows) == ["pacs", "archive"]  # in the config's order
    assert (rows["pacs"].circuit, rows["pacs"].states, rows["pacs"].address) == (
        "CLOSED",
        {"DELIVERED": 1},
        "PACS@10.0.0.1:104",
    )
    assert (rows["archive"].circuit, rows["archive"].failures, rows["archive"].states) == (
        "OPEN",
        3,
        {"FAILED": 1},
    )
    assert rows["pacs"].profile == "default"


def test_a_destination_no_longer_configured_still_shows_its_rows(engine: Engine) -> None:
    only_pacs = Settings(destinations=[settings().destinations[0]])
    rows = destinations.destinations(engine, only_pacs)
    assert [(r.destination, r.configured, r.address) for r in rows] == [
        ("pacs", True, "PACS@10.0.0.1:104"),
        ("archive", False, None),
    ]


def test_circuits_are_listed_as_stored(engine: Engine) -> None:
    [c] = destinations.circuits(engine)
    assert (c.destination, c.circuit, c.failures, c.opened_at) == (
        "archive",
        "OPEN",
        3,
        at(22).isoformat(),
    )


# --- dashboard ------------------------------------------------------------------------------


def test_the_dashboard_counts_totals_and_buckets_the_window(engine: Engine) -> None:
    d = dashboard.dashboard(engine, "24h")
    assert (d.totals.instances, d.totals.studies) == (5, 2)
    assert d.totals.studies_by_state == {"COMPLETE": 1, "RECEIVING": 1}
    assert d.totals.jobs_by_state == {"DONE": 1, "FAILED": 1}
    assert len(d.buckets) in (24, 25) and d.bucket_s == 3600
    assert sum(d.ingest) == 5
    assert sum(d.latency["receive"].n) == 1
    assert [v for v in d.latency["inference"].p50 if v is not None] == [6.0]
    assert [v for v in d.latency["export"].p95 if v is not None] == [3.0]
    assert sum(d.failures["export.failed"]) == 1
    assert d.oldest_queued is None


def test_the_dashboard_names_the_oldest_queued_job(engine: Engine) -> None:
    add_job(engine, "job-old", study_uid=STUDY, queued_at=utcnow() - timedelta(minutes=5))
    add_job(engine, "job-new", study_uid=STUDY)
    d = dashboard.dashboard(engine, "7d")
    assert d.window == "7d" and d.bucket_s == 6 * 3600
    assert d.oldest_queued is not None and d.oldest_queued.job_id == "job-old"
    assert d.oldest_queued.age_s is not None and d.oldest_queued.age_s >= 300


def test_an_unknown_window_is_the_last_24_hours(engine: Engine) -> None:
    assert dashboard.dashboard(engine, "1y").window == "24h"


# --- audit ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flt", "count"),
    [
        (audit.AuditFilter(), 7),
        (audit.AuditFilter(event_type="export."), 3),
        (audit.AuditFilter(event_type="export.failed"), 1),
        (audit.AuditFilter(event_type="export"), 0),  # a prefix must end in "."
        (audit.AuditFilter(study_uid=STUDY), 6),
        (audit.AuditFilter(actor="system"), 6),
        (audit.AuditFilter(since=date.today() + timedelta(days=1)), 0),
        (audit.AuditFilter(until=date.today() - timedelta(days=2)), 0),
        (audit.AuditFilter(limit=2), 2),
    ],
)
def test_audit_filters(engine: Engine, flt: audit.AuditFilter, count: int) -> None:
    assert len(audit.audit(engine, flt)) == count


def test_the_audit_log_is_newest_first_and_lists_its_event_types(engine: Engine) -> None:
    rows = audit.audit(engine, audit.AuditFilter())
    assert rows[0].event == "user.login_failed"
    assert [r.at for r in rows] == sorted((r.at for r in rows), reverse=True)
    assert audit.event_types(engine)[:2] == ["export.delivered", "export.failed"]


def test_audit_csv_cells_never_start_a_formula(engine: Engine) -> None:
    text = audit.audit_csv(audit.audit(engine, audit.AuditFilter()))
    table = list(csv.reader(io.StringIO(text)))
    assert tuple(table[0]) == audit.CSV_COLUMNS
    assert table[1][3] == "'=cmd|' /C calc'!A0"
    assert not [c for row in table for c in row if c[:1] in ("=", "+", "-", "@")]
    assert audit.csv_cell(None) == "" and audit.csv_cell("-1") == "'-1"


# --- models ---------------------------------------------------------------------------------


def test_model_stats_count_runs_failures_and_the_daily_trend(engine: Engine) -> None:
    add_job(
        engine, "job-c", study_uid=OTHER, state="DONE", model="threshold", result=summary(0, 0.0)
    )
    stats = models.model_stats(engine)
    t = stats["threshold"]
    assert (t.runs, t.done, t.failed, t.failure_rate, t.mean_runtime_s) == (2, 2, 0, 0.0, 6.0)
    [day] = t.days
    assert (day.runs, day.positive_share, day.mean_volume_ml) == (2, 0.5, {"bone": 6.25})
    m = stats["m"]
    assert (m.runs, m.failed, m.failure_rate, m.days) == (1, 1, 1.0, [])


def test_the_models_overview_names_models_jobs_ran_that_are_not_installed(
    engine: Engine, tmp_path: Path
) -> None:
    rows = {r.name: r for r in models.models_overview(engine, [tmp_path / "no-models"])}
    assert rows["threshold"].status == "not installed"
    assert rows["threshold"].stats is not None and rows["threshold"].stats.runs == 1
    assert rows["threshold"].trend.positive == [100.0]
    assert rows["threshold"].trend.volumes == {"bone": [12.5]}
    assert rows["m"].trend.days == []


def test_a_model_folder_with_a_broken_manifest_says_what_is_wrong(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "manifest.toml").write_text("name = [\n")
    [row] = models.describe_models([tmp_path])
    assert row.name == "broken" and row.status != "ok" and row.version is None
