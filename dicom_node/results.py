"""The job result contract: what inference returns, what the results builder adds, what the job
row stores (``jobs.result``, JSON) and what the outbox and the read models read back.

One set of frozen types for every stage: the pipeline makes the ``JobSummary``, the builder
gives it its ``BuiltResults``, ``jobs.service.results_ready`` stores it and makes the outbox
rows from its objects, and ``admin`` reads measurements from it. ``to_json``/``from_json`` keep
the stored JSON exactly as it was (rows written before this module read back the same).
A leaf module: it imports nothing of the node's.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from typing import Any


class ObjectKind(StrEnum):
    """A result object's kind, and the name of its validation in the builder."""

    SEG = "seg"  # Segmentation
    SR = "sr"  # TID 1500 Measurement Report
    PM = "pm"  # Parametric Map of the model's confidence
    SC = "sc"  # key images (Secondary Capture)
    KOS = "kos"  # Key Object Selection of the key images


@dataclass(frozen=True, slots=True)
class LabelMeasure:
    """One label of one series: voxels, volume (mL), source intensity mean/SD (HU for CT)."""

    value: int
    name: str
    voxels: int
    volume_ml: float
    mean: float | None = None
    std: float | None = None
    max_probability: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LabelMeasure:
        return cls(
            value=int(data["value"]),
            name=str(data["name"]),
            voxels=int(data.get("voxels") or 0),
            volume_ml=float(data.get("volume_ml") or 0.0),
            mean=data.get("mean"),
            std=data.get("std"),
            max_probability=data.get("max_probability"),
        )


@dataclass(frozen=True, slots=True)
class SeriesSummary:
    """One series (one stack) through the model, mapped back onto its source frames."""

    series_uid: str
    mask: str  # file name of the mask, in the attempt's folder
    frames: int
    labels: tuple[LabelMeasure, ...]
    timings_s: dict[str, float]
    source_shape: tuple[int, ...] = ()
    model_shape: tuple[int, ...] = ()
    source_spacing_mm: tuple[float, ...] = ()
    model_spacing_mm: tuple[float, ...] = ()
    tilt_deg: float = 0.0
    uniform: bool = True
    spacing: str = ""
    stacks: tuple[dict[str, Any], ...] = ()
    notes: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("source_shape", "model_shape", "source_spacing_mm", "model_spacing_mm"):
            out[key] = list(out[key])
        out["stacks"], out["notes"] = list(self.stacks), list(self.notes)
        out["labels"] = [asdict(label) for label in self.labels]
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SeriesSummary:
        return cls(
            series_uid=str(data["series_uid"]),
            mask=str(data.get("mask", "")),
            frames=int(data.get("frames") or 0),
            labels=tuple(LabelMeasure.from_json(x) for x in data.get("labels", [])),
            timings_s=dict(data.get("timings_s") or {}),
            source_shape=tuple(data.get("source_shape") or ()),
            model_shape=tuple(data.get("model_shape") or ()),
            source_spacing_mm=tuple(data.get("source_spacing_mm") or ()),
            model_spacing_mm=tuple(data.get("model_spacing_mm") or ()),
            tilt_deg=float(data.get("tilt_deg") or 0.0),
            uniform=bool(data.get("uniform", True)),
            spacing=str(data.get("spacing") or ""),
            stacks=tuple(data.get("stacks") or ()),
            notes=tuple(data.get("notes") or ()),
        )


@dataclass(frozen=True, slots=True)
class ResultObject:
    """One DICOM object written and validated, ready for the outbox."""

    kind: ObjectKind
    path: str
    sop_class_uid: str
    sop_instance_uid: str
    series_uid: str  # the source series it was made from

    def to_json(self) -> dict[str, str]:
        return {
            "kind": str(self.kind),
            "path": self.path,
            "sop_class_uid": self.sop_class_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "series_uid": self.series_uid,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResultObject:
        return cls(
            kind=ObjectKind(data["kind"]),
            path=str(data["path"]),
            sop_class_uid=str(data["sop_class_uid"]),
            sop_instance_uid=str(data["sop_instance_uid"]),
            series_uid=str(data.get("series_uid", "")),
        )


@dataclass(frozen=True, slots=True)
class BuiltResults:
    """Per result profile, the objects its destinations get; build timings; the source
    attributes repaired before copying (in order)."""

    objects: dict[str, tuple[ResultObject, ...]]
    timings_s: dict[str, float] = field(default_factory=dict)
    source_repairs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "objects": {p: [o.to_json() for o in objs] for p, objs in self.objects.items()},
            "timings_s": dict(self.timings_s),
            "source_repairs": list(self.source_repairs),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BuiltResults:
        return cls(
            objects={
                p: tuple(ResultObject.from_json(o) for o in objs)
                for p, objs in (data.get("objects") or {}).items()
            },
            timings_s=dict(data.get("timings_s") or {}),
            source_repairs=tuple(data.get("source_repairs") or ()),
        )


@dataclass(frozen=True, slots=True)
class JobSummary:
    """The job's result, as stored on its row once it is RESULTS_READY."""

    model: str
    version: str
    weights_sha256: str
    device: str
    attempt: int
    path: str  # the attempt's folder: masks and summary.json
    series: tuple[SeriesSummary, ...]
    confidence_map: bool = False
    results: BuiltResults | None = None

    def with_results(self, results: BuiltResults) -> JobSummary:
        return replace(self, results=results)

    def objects_for(self, profile: str) -> tuple[ResultObject, ...]:
        return self.results.objects.get(profile, ()) if self.results else ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "weights_sha256": self.weights_sha256,
            "device": self.device,
            "attempt": self.attempt,
            "path": self.path,
            "confidence_map": self.confidence_map,
            "series": [s.to_json() for s in self.series],
        }
        if self.results is not None:
            out["results"] = self.results.to_json()
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobSummary:
        results = data.get("results")
        return cls(
            model=str(data.get("model", "")),
            version=str(data.get("version", "")),
            weights_sha256=str(data.get("weights_sha256", "")),
            device=str(data.get("device", "")),
            attempt=int(data.get("attempt") or 0),
            path=str(data.get("path", "")),
            series=tuple(SeriesSummary.from_json(s) for s in data.get("series", [])),
            confidence_map=bool(data.get("confidence_map")),
            results=BuiltResults.from_json(results) if results else None,
        )
