"""Installed models and their monitoring: every plug-in's manifest parsed and its weights'
sha256 checked (without importing torch: the node may run without it), and per model the
runs, failures, runtime and per-day trend of the last 30 days."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine, select

from dicom_node.admin.read.common import seconds
from dicom_node.db.models import Job, utcnow
from dicom_node.domain import JobState
from dicom_node.results import JobSummary


@dataclass(frozen=True, slots=True)
class DayStats:
    day: str
    runs: int
    positive_share: float  # runs with any labelled voxel
    mean_volume_ml: dict[str, float]  # per label


@dataclass(frozen=True, slots=True)
class ModelStats:
    runs: int
    done: int
    failed: int
    cancelled: int
    failure_rate: float | None  # failed / (done + failed)
    mean_runtime_s: float | None
    days: list[DayStats]


@dataclass(frozen=True, slots=True)
class Trend:
    days: list[str]
    positive: list[float]  # percent
    volumes: dict[str, list[float | None]]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    name: str
    version: str | None
    runner: str | None
    labels: list[str]
    status: str  # "ok", or what is wrong
    folder: str | None  # where it was found on the search path


@dataclass(frozen=True, slots=True)
class ModelRow(ModelInfo):
    stats: ModelStats | None
    trend: Trend


def describe_models(where: Sequence[Path]) -> list[ModelInfo]:
    """Every model on the search path (``Settings.model_path``), checked; a name found in two
    roots is the first one's, as the workers load it."""
    from workers.inference.manifest import MANIFEST, ModelError, load_manifest  # noqa: PLC0415

    rows: list[ModelInfo] = []
    folders: dict[str, Path] = {}
    for root in where:
        for found in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
            folders.setdefault(found.parent.name, found.parent)
    for name, folder in sorted(folders.items()):
        try:
            manifest, _ = load_manifest(folder.parent, name)
        except ModelError as exc:
            rows.append(ModelInfo(name, None, None, [], str(exc), str(folder)))
            continue
        rows.append(
            ModelInfo(
                folder.name,
                manifest.version,
                manifest.runner.kind,
                [label.name for label in manifest.labels],
                _weights_status(folder, manifest.runner.weights, manifest.runner.sha256),
                str(folder),
            )
        )
    return rows


def _weights_status(folder: Path, weights: str, sha256: str) -> str:
    from workers.inference.manifest import sha256_of  # noqa: PLC0415

    path = folder / weights
    if not path.is_file():
        return f"weights missing: {weights}"
    return "ok" if sha256_of(path) == sha256 else f"weights fail the sha256 check ({weights})"


def models_overview(engine: Engine, where: Sequence[Path]) -> list[ModelRow]:
    """The models page and API: every installed model (and every model jobs name that is not
    installed) with its run statistics and daily trend."""
    stats = model_stats(engine)
    infos = describe_models(where)
    names = {i.name for i in infos}
    infos += [
        ModelInfo(n, None, None, [], "not installed", None) for n in sorted(set(stats) - names)
    ]
    return [
        ModelRow(**asdict(i), stats=stats.get(i.name), trend=_trend(stats.get(i.name)))
        for i in infos
    ]


def _trend(found: ModelStats | None) -> Trend:
    days = found.days if found else []
    labels = sorted({k for d in days for k in d.mean_volume_ml})
    return Trend(
        days=[d.day for d in days],
        positive=[round(d.positive_share * 100, 1) for d in days],
        volumes={k: [d.mean_volume_ml.get(k) for d in days] for k in labels},
    )


@dataclass
class _Tally:
    runs: int = 0
    failed: int = 0
    cancelled: int = 0
    done: int = 0
    runtimes: list[float] = field(default_factory=list)
    days: dict[str, _Day] = field(default_factory=dict)


@dataclass
class _Day:
    runs: int = 0
    positive: int = 0
    volumes: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))


def model_stats(engine: Engine, days: int = 30) -> dict[str, ModelStats]:
    """Per model: runs, failures, failure rate, mean runtime; per day the share of runs with a
    positive finding (any labelled voxel) and the mean volume of each label."""
    since = utcnow() - timedelta(days=days)
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                Job.model,
                Job.state,
                Job.started_at,
                Job.results_ready_at,
                Job.created_at,
                Job.result,
            ).where(Job.created_at >= since)
        ).all()
    tallies: dict[str, _Tally] = defaultdict(_Tally)
    for model, state, started, ready, created, result in rows:
        t = tallies[model]
        t.runs += 1
        t.failed += state == JobState.FAILED
        t.cancelled += state == JobState.CANCELLED
        t.done += state == JobState.DONE
        run = seconds(started, ready)
        if run is not None:
            t.runtimes.append(run)
        if result:
            day = t.days.setdefault(created.date().isoformat(), _Day())
            day.runs += 1
            labels = [lab for s in JobSummary.from_json(result).series for lab in s.labels]
            day.positive += any(lab.voxels > 0 for lab in labels)
            for lab in labels:
                day.volumes[lab.name].append(lab.volume_ml)
    return {model: _stats(t) for model, t in tallies.items()}


def _stats(t: _Tally) -> ModelStats:
    finished = t.done + t.failed
    return ModelStats(
        runs=t.runs,
        done=t.done,
        failed=t.failed,
        cancelled=t.cancelled,
        failure_rate=round(t.failed / finished, 4) if finished else None,
        mean_runtime_s=round(statistics.fmean(t.runtimes), 3) if t.runtimes else None,
        days=[
            DayStats(
                day=day,
                runs=d.runs,
                positive_share=round(d.positive / d.runs, 4),
                mean_volume_ml={
                    k: round(statistics.fmean(v), 2) for k, v in sorted(d.volumes.items())
                },
            )
            for day, d in sorted(t.days.items())
        ],
    )
