"""/metrics from index rows put straight into SQLite, parsed back with prometheus_client's own
parser: counters, gauges and the stage histograms are what the rows say, and no label holds PHI."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample
from sqlalchemy import Engine, insert, update

from dicom_node.admin.metrics import BUCKETS, exposition, registry
from dicom_node.db.models import (
    Association,
    AuditEvent,
    DestinationCircuit,
    Export,
    Instance,
    Series,
    Study,
    utcnow,
)
from tests.rows import add_job, add_study, sqlite_index

T0 = utcnow().replace(microsecond=0) - timedelta(hours=1)


def at(s: float) -> object:
    return T0 + timedelta(seconds=s)


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    """One study received in 40 s with 3 instances (one received twice); a DONE job of model
    'ct' (queued 2 s, ran 10 s, exported 3 s), a QUEUED one queued 600 s ago, a FAILED one of
    model 'mr'; two exports delivered to pacs and one failed to archive, whose circuit is open."""
    engine = sqlite_index(tmp_path)
    study = add_study(engine, "1.2.3")
    add_study(engine, "1.2.4", state="RECEIVING")
    with engine.begin() as conn:
        conn.execute(
            update(Study).where(Study.id == study).values(first_received=at(0), completed_at=at(40))
        )
        series = conn.execute(
            insert(Series).returning(Series.id),
            {
                "study_id": study,
                "series_uid": "1.2.3.1",
                "modality": "CT",
                "first_received": at(0),
                "last_received": at(2),
            },
        ).scalar_one()
        for k in range(3):
            conn.execute(
                insert(Instance),
                {
                    "series_id": series,
                    "sop_instance_uid": f"1.2.3.1.{k}",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
                    "transfer_syntax_uid": "1.2.840.10008.1.2.1",
                    "path": f"/x/{k}.dcm",
                    "size_bytes": 10,
                    "received_at": at(k),
                    "duplicates_received": 1 if k == 0 else 0,
                },
            )
        conn.execute(
            insert(Association),
            [
                {
                    "id": name,
                    "calling_ae": "CT1",
                    "called_ae": "NODE",
                    "peer_host": "127.0.0.1",
                    "peer_port": 1,
                    "pid": 1,
                    "started_at": at(0),
                    "ended_at": ended,
                }
                for name, ended in (("a1", at(40)), ("a2", None))
            ],
        )
    add_job(
        engine,
        "done",
        study_uid="1.2.3",
        state="DONE",
        model="ct",
        queued_at=at(41),
        started_at=at(43),
        results_ready_at=at(53),
        finished_at=at(56),
    )
    add_job(
        engine,
        "waiting",
        study_uid="1.2.3",
        model="ct",
        queued_at=utcnow() - timedelta(seconds=600),
    )
    add_job(engine, "broken", study_uid="1.2.3", state="FAILED", model="mr")
    with engine.begin() as conn:
        for n, (destination, state) in enumerate(
            (("pacs", "DELIVERED"), ("pacs", "DELIVERED"), ("archive", "FAILED"))
        ):
            conn.execute(
                insert(Export),
                {
                    "id": f"e{n}",
                    "job_id": "done",
                    "study_uid": "1.2.3",
                    "destination": destination,
                    "kind": "seg",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
                    "sop_instance_uid": f"9.{n}",
                    "path": "/r/x.dcm",
                    "state": state,
                    "max_attempts": 3,
                    "created_at": at(53),
                },
            )
        events = [("job", "done", "job.queued"), ("job", "done", "job.done")]
        events += [("job", "broken", "job.queued"), ("job", "broken", "job.failed")]
        events += [("export", "e0", "export.delivered"), ("export", "e1", "export.delivered")]
        events += [("export", "e2", "export.retry_wait"), ("export", "e2", "export.failed")]
        conn.execute(
            insert(AuditEvent),
            [
                {"event_type": t, "entity_type": kind, "entity_id": i, "study_uid": "1.2.3"}
                for kind, i, t in events
            ],
        )
        conn.execute(
            insert(DestinationCircuit),
            [
                {"destination": "archive", "state": "OPEN"},
                {"destination": "pacs", "state": "CLOSED"},
            ],
        )
    return engine


def scrape(engine: Engine, root: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = exposition(registry(engine, root)).decode()
    samples: list[Sample] = [s for f in text_string_to_metric_families(text) for s in f.samples]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def test_counters_and_gauges_are_what_the_rows_say(engine: Engine, tmp_path: Path) -> None:
    m = scrape(engine, tmp_path)
    assert m[("dicom_node_instances_stored_total", ())] == 3
    assert m[("dicom_node_instances_duplicate_total", ())] == 1
    assert m[("dicom_node_studies_received_total", ())] == 2
    assert m[("dicom_node_studies_completed_total", ())] == 1
    assert m[("dicom_node_studies", (("state", "COMPLETE"),))] == 1
    assert m[("dicom_node_studies", (("state", "RECEIVING"),))] == 1
    assert m[("dicom_node_job_events_total", (("event", "job.queued"), ("model", "ct")))] == 1
    assert m[("dicom_node_job_events_total", (("event", "job.failed"), ("model", "mr")))] == 1
    delivered = (("destination", "pacs"), ("event", "export.delivered"))
    assert m[("dicom_node_export_events_total", delivered)] == 2
    assert m[("dicom_node_exports", (("destination", "archive"), ("state", "FAILED")))] == 1
    assert m[("dicom_node_jobs", (("model", "ct"), ("state", "QUEUED")))] == 1
    assert m[("dicom_node_queue_depth", ())] == 1
    assert 599 < m[("dicom_node_oldest_queued_age_seconds", ())] < 700
    assert m[("dicom_node_open_associations", ())] == 1
    assert m[("dicom_node_circuit_open", (("destination", "archive"),))] == 1
    assert m[("dicom_node_circuit_open", (("destination", "pacs"),))] == 0
    assert m[("dicom_node_disk_free_bytes", ())] > 0


def test_stage_histograms_come_from_the_stage_timestamps(engine: Engine, tmp_path: Path) -> None:
    m = scrape(engine, tmp_path)

    def bucket(stage: str, le: str) -> float:
        return m[("dicom_node_stage_seconds_bucket", (("le", le), ("stage", stage)))]

    assert m[("dicom_node_stage_seconds_sum", (("stage", "receive"),))] == 40
    assert bucket("receive", "30") == 0 and bucket("receive", "60") == 1
    assert m[("dicom_node_stage_seconds_sum", (("stage", "queue_wait"),))] == 2
    assert m[("dicom_node_stage_seconds_count", (("stage", "inference"),))] == 1
    assert bucket("inference", "10") == 1 and bucket("inference", "5") == 0
    assert m[("dicom_node_stage_seconds_sum", (("stage", "export"),))] == 3
    per_model = m[("dicom_node_inference_seconds_sum", (("model", "ct"),))]
    assert per_model == 10
    assert ("dicom_node_inference_seconds_sum", (("model", "mr"),)) not in m  # never ran
    assert len([k for k in m if k[0] == "dicom_node_stage_seconds_bucket"]) == 4 * (
        len(BUCKETS) + 1
    )


def test_an_empty_index_scrapes_with_zeros(tmp_path: Path) -> None:
    m = scrape(sqlite_index(tmp_path), tmp_path / "not-there")
    assert m[("dicom_node_instances_stored_total", ())] == 0
    assert m[("dicom_node_queue_depth", ())] == 0
    assert m[("dicom_node_oldest_queued_age_seconds", ())] == 0
    assert m[("dicom_node_stage_seconds_count", (("stage", "receive"),))] == 0
