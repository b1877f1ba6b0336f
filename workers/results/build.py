"""⑤b results: a job's masks -> SEG, SR, key images (and confidence maps) per profile, validated.

Objects are built once per variant (a SEG with and without empty frames is two objects, with two
UIDs) and shared by every profile that wants that variant. Each is written atomically under
``<attempt>/objects/`` and then validated before anything is queued for export: it must read back
structurally (``workers.results.check``: what highdicom's read-back relies on, without building
its objects; the tests read every object back with highdicom too), and reference only instances
the node holds. A failure is a ``ResultError``: the
job FAILS with its message, for the admin.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset

from dicom_node.results import BuiltResults, JobSummary, ObjectKind, ResultObject, SeriesSummary
from dicom_node.settings import ProfileSettings
from workers.inference.decode import read_instance
from workers.inference.manifest import Manifest
from workers.results.check import check
from workers.results.keyimages import build_key_images
from workers.results.kos import build_kos, key_sources
from workers.results.pmap import build_confidence_map
from workers.results.seg import Mask, ResultError, build_seg
from workers.results.sources import repair
from workers.results.sr import build_sr

OBJECTS = "objects"


def load_mask(path: Path) -> Mask:
    """A mask saved by the pipeline, read whole."""
    with np.load(path) as saved:  # an NpzFile holds its file open until closed
        return Mask(
            labels=saved["labels"],
            sop_instance_uids=tuple(str(u) for u in saved["sop_instance_uids"]),
            frame_numbers=tuple(int(n) for n in saved["frame_numbers"]),
            probabilities=saved["probabilities"] if "probabilities" in saved.files else None,
            confidence=saved["confidence"] if "confidence" in saved.files else None,
        )


def write_object(ds: Dataset, folder: Path, kind: str, earlier: Sequence[Path] = ()) -> Path:
    """``<kind>-<SOPInstanceUID>.dcm``, written to a temp name, fsynced, renamed.

    One UID, one content, one set of bytes: when an earlier build (another attempt, or the run
    these results replace) made an object with this UID, its UID says it has the same content
    (``provenance.content_digest``), and its bytes are copied rather than written anew with new
    creation times. The PACS then gets exactly the object it may already hold."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
    temp = path.with_suffix(".tmp")
    same = next((f / path.name for f in earlier if (f / path.name).is_file() and f != folder), None)
    with temp.open("wb") as f:
        if same is not None:
            f.write(same.read_bytes())
        else:
            ds.save_as(f, enforce_file_format=True)
        f.flush()
        os.fsync(f.fileno())
    temp.rename(path)
    return path


# References to a study or a procedure step, not to an instance (ReferencedStudySequence,
# ReferencedPerformedProcedureStepSequence): their "instance" is a Study Instance UID.
_NOT_INSTANCES = (
    "1.2.840.10008.3.1.2.3.1",  # Detached Study Management
    "1.2.840.10008.3.1.2.3.2",  # Study Component Management
    "1.2.840.10008.3.1.2.3.3",  # Modality Performed Procedure Step
)


def _referenced_uids(ds: Dataset) -> set[str]:
    """Every instance the object references, wherever in it (not studies or procedure steps)."""
    found: set[str] = set()

    def walk(item: Dataset) -> None:
        for elem in item:
            if elem.VR == "SQ":
                for child in elem.value:
                    walk(child)
            elif elem.keyword == "ReferencedSOPInstanceUID" and (
                str(item.get("ReferencedSOPClassUID", "")) not in _NOT_INSTANCES
            ):
                found.add(str(elem.value))

    walk(ds)
    return found


def validate(
    path: Path,
    kind: str,
    known: set[str],
    *,
    seg_uid: str | None = None,
    previous: Sequence[str] = (),
    made: Sequence[str] = (),
) -> None:
    """Check the object as written has what a reader needs (``check``; the tests also read
    every object back with highdicom), and that what it references exists: the sources, its
    SEG (for an SR), the reports it replaces, the key images it selects (``made``: for a
    KOS)."""
    back = check(path, kind)
    refs = _referenced_uids(back) - {str(back.SOPInstanceUID)}
    if kind == "sr":
        if seg_uid not in refs:
            raise ResultError(f"SR {back.SOPInstanceUID} does not reference its SEG {seg_uid}")
        refs.discard(str(seg_uid))
    unknown = sorted(refs - known - set(previous) - set(made))
    if unknown:
        raise ResultError(f"{kind} {back.SOPInstanceUID} references unknown instance {unknown[0]}")


def _entry(kind: ObjectKind, path: Path, ds: Dataset, series_uid: str) -> ResultObject:
    return ResultObject(
        kind=kind,
        path=str(path),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        series_uid=series_uid,
    )


@dataclass(frozen=True, slots=True)
class Variant:
    """What makes two objects of one series different objects: a SEG with and without its empty
    frames, an SR of each SOP Class, key images by count. Profiles wanting the same variant
    share the one object."""

    kind: ObjectKind
    series_uid: str
    omit_empty_frames: bool = False
    sr_class: str = ""
    count: int = 0
    geometry: str = "source"


@dataclass
class _Series:
    """One series' inputs for the builders."""

    summary: SeriesSummary
    mask: Mask
    sources: dict[str, Dataset]  # SOP Instance UID -> source, in frame order

    @property
    def ordered(self) -> list[Dataset]:
        return list(self.sources.values())


class _Builder:
    """Builds, writes and validates each variant once, keeping its dataset and timings."""

    def __init__(
        self,
        summary: JobSummary,
        manifest: Manifest,
        source_paths: Mapping[str, Path],
        *,
        at: datetime,
        workers: int,
        earlier: Sequence[Path] = (),
    ) -> None:
        self.manifest, self.source_paths, self.at, self.workers = (
            manifest,
            source_paths,
            at,
            workers,
        )
        self.job_dir = Path(summary.path)
        self.folder = self.job_dir / OBJECTS
        # where objects of earlier builds are: this job's other attempts, the replaced run's
        self.earlier = [*sorted(self.job_dir.parent.glob(f"attempt-*/{OBJECTS}")), *earlier]
        self.weights = summary.weights_sha256
        self.built: dict[Variant, tuple[Dataset, ResultObject]] = {}
        self.key_images: dict[Variant, list[ResultObject]] = {}
        self.sc_datasets: dict[str, Dataset] = {}
        self.timings = {"seg": 0.0, "pm": 0.0, "sr": 0.0, "sc": 0.0, "kos": 0.0, "validate": 0.0}
        self.notes: dict[str, None] = {}  # source attributes repaired before copying, in order

    def series(self, summary: SeriesSummary) -> _Series:
        mask = load_mask(self.job_dir / summary.mask)
        missing = [u for u in mask.sop_instance_uids if u not in self.source_paths]
        if missing:
            raise ResultError(f"source instance {missing[0]} is no longer stored")
        uids = list(dict.fromkeys(mask.sop_instance_uids))
        sources = {u: read_instance(self.source_paths[u]) for u in uids}
        for ds in sources.values():
            self.notes.update(dict.fromkeys(repair(ds)))
        return _Series(summary, mask, sources)

    def once(self, variant: Variant, make: Callable[[], Dataset], **check: Any) -> ResultObject:
        if variant not in self.built:
            t0 = time.perf_counter()
            ds = make()
            t1 = time.perf_counter()
            path = write_object(ds, self.folder, variant.kind, self.earlier)
            validate(path, variant.kind, set(self.source_paths), **check)
            self.timings[variant.kind] += t1 - t0
            self.timings["validate"] += time.perf_counter() - t1
            self.built[variant] = (ds, _entry(variant.kind, path, ds, variant.series_uid))
        return self.built[variant][1]

    def seg(self, s: _Series, omit_empty_frames: bool, geometry: str = "source") -> Variant:
        variant = Variant(
            ObjectKind.SEG, s.summary.series_uid, omit_empty_frames, geometry=geometry
        )
        self.once(
            variant,
            partial(
                build_seg,
                s.ordered,
                s.mask,
                self.manifest,
                weights_sha256=self.weights,
                at=self.at,
                omit_empty_frames=omit_empty_frames,
                workers=self.workers,
                geometry=geometry,
            ),
        )
        return variant

    def confidence_map(self, s: _Series) -> ResultObject:
        return self.once(
            Variant(ObjectKind.PM, s.summary.series_uid),
            partial(
                build_confidence_map,
                s.ordered,
                s.mask,
                self.manifest,
                weights_sha256=self.weights,
                at=self.at,
            ),
        )

    def sr(self, s: _Series, seg: Variant, sr_class: str, previous: Sequence[Path]) -> ResultObject:
        seg_ds = self.built[seg][0]
        before = [dcmread(p) for p in previous]
        return self.once(
            Variant(
                ObjectKind.SR,
                s.summary.series_uid,
                seg.omit_empty_frames,
                sr_class,
                0,
                seg.geometry,
            ),
            partial(
                build_sr,
                seg_ds,
                s.ordered,
                s.mask,
                s.summary.labels,
                self.manifest,
                weights_sha256=self.weights,
                at=self.at,
                sr_class=sr_class,
                previous=before,
            ),
            seg_uid=str(seg_ds.SOPInstanceUID),
            previous=[str(b.SOPInstanceUID) for b in before],
        )

    def sc(self, s: _Series, count: int) -> list[ResultObject]:
        variant = Variant(ObjectKind.SC, s.summary.series_uid, count=count)
        if variant not in self.key_images:
            t0 = time.perf_counter()
            images = build_key_images(
                s.sources,
                dict(self.source_paths),
                s.mask,
                self.manifest,
                count=count,
                weights_sha256=self.weights,
                at=self.at,
            )
            entries = []
            for image in images:
                self.sc_datasets[str(image.SOPInstanceUID)] = image
                path = write_object(image, self.folder, ObjectKind.SC, self.earlier)
                validate(path, ObjectKind.SC, set(self.source_paths))
                entries.append(_entry(ObjectKind.SC, path, image, s.summary.series_uid))
            self.key_images[variant] = entries
            self.timings["sc"] += time.perf_counter() - t0
        return self.key_images[variant]

    def for_profile(
        self,
        s: _Series,
        profile: ProfileSettings,
        *,
        confidence: bool,
        previous: Sequence[Path],
    ) -> list[ResultObject]:
        """The objects one profile wants of one series, in their order: SEG, PM, SR, key
        images."""
        out: list[ResultObject] = []
        if profile.seg:
            seg = self.seg(s, profile.omit_empty_frames, profile.seg_geometry)
            out.append(self.built[seg][1])
            if confidence:
                out.append(self.confidence_map(s))
            if profile.sr and {"measurements", "findings"} & set(self.manifest.outputs):
                out.append(self.sr(s, seg, profile.sr_class, previous))
        if profile.key_images:
            out += self.sc(s, profile.key_images)
        if profile.kos and (kos := self.kos(s, profile.key_images)) is not None:
            out.append(kos)
        return out

    def kos(self, s: _Series, count: int) -> ResultObject | None:
        """The selection of the source key images and of this profile's SC key images; None
        when the model found nothing (no image to flag)."""
        pictures = [
            self.sc_datasets[e.sop_instance_uid]
            for e in self.key_images.get(
                Variant(ObjectKind.SC, s.summary.series_uid, count=count), []
            )
        ]
        selected = key_sources(s.sources, s.mask, self.manifest) + pictures
        if not selected:
            return None
        return self.once(
            Variant(ObjectKind.KOS, s.summary.series_uid, count=count),
            lambda: build_kos(
                selected,
                self.manifest,
                weights_sha256=self.weights,
                at=self.at,
            ),
            made=[str(p.SOPInstanceUID) for p in pictures],
        )


def build_results(
    summary: JobSummary,
    manifest: Manifest,
    profiles: Mapping[str, ProfileSettings],
    source_paths: Mapping[str, Path],
    *,
    at: datetime,
    previous: Mapping[str, Sequence[Path]] | None = None,
    workers: int = 0,
    confidence: bool = False,
) -> BuiltResults:
    """Objects per profile name, plus build timings. ``previous``: per profile, the SR files of
    the results these replace (``PredecessorDocumentsSequence``). ``confidence``: a Parametric
    Map of the model's confidence goes with every SEG (the rule's ``confidence_map``)."""
    earlier = sorted({p.parent for paths in (previous or {}).values() for p in paths})
    builder = _Builder(summary, manifest, source_paths, at=at, workers=workers, earlier=earlier)
    per_profile: dict[str, list[ResultObject]] = {name: [] for name in profiles}
    if "seg" in manifest.outputs:
        for series in summary.series:
            inputs = builder.series(series)
            for name, profile in profiles.items():
                per_profile[name] += builder.for_profile(
                    inputs,
                    profile,
                    confidence=confidence,
                    previous=(previous or {}).get(name, ()),
                )
    return BuiltResults(
        objects={name: tuple(objs) for name, objs in per_profile.items()},
        timings_s=builder.timings,
        source_repairs=tuple(builder.notes),
    )
