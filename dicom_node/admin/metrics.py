"""Prometheus metrics, read from the index at scrape time.

The database is the source of truth and every process (SCPs, workers, senders) writes to it, so
one collector here sees the whole node without a multiprocess registry. Counters are counts of
append-only rows (instances, audit events), so they only grow; histograms are built from the
stage timestamps of every study and job; gauges are read now. No label carries PHI.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, select

from dicom_node.admin.read.common import seconds
from dicom_node.db.models import (
    Association,
    AuditEvent,
    DestinationCircuit,
    Export,
    Instance,
    Job,
    Study,
    utcnow,
)
from dicom_node.domain import CircuitState, JobState

# seconds: from a quick C-ECHO-sized step to a study that trickles in over an hour
CONTENT_TYPE = CONTENT_TYPE_LATEST
BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
JOB_OUTCOMES = ("job.done", "job.failed", "job.cancelled", "job.requeued")
EXPORT_OUTCOMES = ("export.delivered", "export.retry_wait", "export.failed")


def histogram(
    name: str, doc: str, label: str, observations: dict[str, list[float]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for key, values in sorted(observations.items()):
        buckets = [(str(b), float(sum(1 for v in values if v <= b))) for b in BUCKETS]
        buckets.append(("+Inf", float(len(values))))
        family.add_metric([key], buckets, sum(values))
    return family


class IndexCollector(Collector):
    def __init__(self, engine: Engine, storage_root: Path) -> None:
        self.engine = engine
        self.storage_root = storage_root

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            instances, duplicates = conn.execute(
                select(
                    func.count(Instance.id),
                    func.coalesce(func.sum(Instance.duplicates_received), 0),
                )
            ).one()
            studies = conn.execute(select(func.count(Study.id))).scalar_one()
            completed = conn.execute(
                select(func.coalesce(func.sum(Study.times_completed), 0))
            ).scalar_one()
            study_states = conn.execute(
                select(Study.state, func.count()).group_by(Study.state)
            ).all()
            job_events = conn.execute(
                select(Job.model, AuditEvent.event_type, func.count())
                .join(Job, Job.id == AuditEvent.entity_id)
                .where(AuditEvent.entity_type == "job")
                .where(AuditEvent.event_type.in_(("job.queued", *JOB_OUTCOMES)))
                .group_by(Job.model, AuditEvent.event_type)
            ).all()
            export_events = conn.execute(
                select(Export.destination, AuditEvent.event_type, func.count())
                .join(Export, Export.id == AuditEvent.entity_id)
                .where(AuditEvent.entity_type == "export")
                .where(AuditEvent.event_type.in_(EXPORT_OUTCOMES))
                .group_by(Export.destination, AuditEvent.event_type)
            ).all()
            job_states = conn.execute(
                select(Job.model, Job.state, func.count()).group_by(Job.model, Job.state)
            ).all()
            oldest_queued = conn.execute(
                select(func.min(Job.queued_at)).where(Job.state == str(JobState.QUEUED))
            ).scalar_one()
            export_states = conn.execute(
                select(Export.destination, Export.state, func.count()).group_by(
                    Export.destination, Export.state
                )
            ).all()
            circuits = conn.execute(
                select(DestinationCircuit.destination, DestinationCircuit.state)
            ).all()
            open_associations = conn.execute(
                select(func.count(Association.id)).where(Association.ended_at.is_(None))
            ).scalar_one()
            study_times = conn.execute(
                select(Study.first_received, Study.completed_at).where(
                    Study.completed_at.is_not(None)
                )
            ).all()
            job_times = conn.execute(
                select(
                    Job.model,
                    Job.created_at,
                    Job.queued_at,
                    Job.started_at,
                    Job.results_ready_at,
                    Job.finished_at,
                    Job.state,
                )
            ).all()
        now = utcnow()

        yield _counter("dicom_node_instances_stored", "SOP instances stored and indexed", instances)
        yield _counter(
            "dicom_node_instances_duplicate", "instances received again (acknowledged)", duplicates
        )
        yield _counter("dicom_node_studies_received", "studies seen", studies)
        yield _counter("dicom_node_studies_completed", "times a study became COMPLETE", completed)
        yield _labelled(
            CounterMetricFamily,
            "dicom_node_job_events",
            "job transitions by model and event (job.queued, job.done, ...)",
            ("model", "event"),
            job_events,
        )
        yield _labelled(
            CounterMetricFamily,
            "dicom_node_export_events",
            "export outcomes by destination (export.delivered, export.retry_wait, export.failed)",
            ("destination", "event"),
            export_events,
        )
        yield _labelled(
            GaugeMetricFamily, "dicom_node_studies", "studies by state", ("state",), study_states
        )
        yield _labelled(
            GaugeMetricFamily,
            "dicom_node_jobs",
            "jobs by model and state",
            ("model", "state"),
            job_states,
        )
        yield _labelled(
            GaugeMetricFamily,
            "dicom_node_exports",
            "outbox rows by destination and state",
            ("destination", "state"),
            export_states,
        )
        depth = sum(n for _m, state, n in job_states if state == JobState.QUEUED)
        yield GaugeMetricFamily("dicom_node_queue_depth", "QUEUED jobs", value=depth)
        yield GaugeMetricFamily(
            "dicom_node_oldest_queued_age_seconds",
            "age of the oldest QUEUED job (0 when none)",
            value=seconds(oldest_queued, now) or 0.0,
        )
        yield GaugeMetricFamily(
            "dicom_node_open_associations", "associations open now", value=open_associations
        )
        yield _labelled(
            GaugeMetricFamily,
            "dicom_node_circuit_open",
            "1 when a destination's circuit is OPEN (sending paused)",
            ("destination",),
            [(d, 1 if s == CircuitState.OPEN else 0) for d, s in circuits],
        )
        usage = shutil.disk_usage(self.storage_root if self.storage_root.exists() else Path("/"))
        yield GaugeMetricFamily(
            "dicom_node_disk_free_bytes", "free space on the storage root", value=usage.free
        )

        stages: dict[str, list[float]] = {
            "receive": [],
            "queue_wait": [],
            "inference": [],
            "export": [],
        }
        inference: dict[str, list[float]] = {}
        for first, done in study_times:
            value = seconds(first, done)
            if value is not None:
                stages["receive"].append(value)
        for model, _created, queued, started, ready, finished, state in job_times:
            for stage, value in (
                ("queue_wait", seconds(queued, started)),
                ("inference", seconds(started, ready)),
                ("export", seconds(ready, finished) if state == JobState.DONE else None),
            ):
                if value is not None:
                    stages[stage].append(value)
            run = seconds(started, ready)
            if run is not None:
                inference.setdefault(model, []).append(run)
        yield histogram(
            "dicom_node_stage_seconds",
            "stage latency: receive (first instance to COMPLETE), queue_wait, inference "
            "(claimed to results ready), export (results ready to DONE)",
            "stage",
            stages,
        )
        yield histogram(
            "dicom_node_inference_seconds",
            "time from claim to results ready, per model",
            "model",
            inference,
        )


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=float(value))


def _labelled(
    kind: type[CounterMetricFamily] | type[GaugeMetricFamily],
    name: str,
    doc: str,
    labels: Sequence[str],
    rows: Iterable[Sequence[object]],
) -> CounterMetricFamily | GaugeMetricFamily:
    """One family from rows of (label values..., value)."""
    family = kind(name, doc, labels=list(labels))
    for *keys, value in rows:
        family.add_metric([str(k) for k in keys], float(value))  # type: ignore[arg-type]
    return family


def registry(engine: Engine, storage_root: Path) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(IndexCollector(engine, storage_root))
    return reg


def exposition(reg: CollectorRegistry) -> bytes:
    return generate_latest(reg)
