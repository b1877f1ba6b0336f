"""⑤b results: a job's masks -> SEG, SR, key images (and confidence maps) per profile, validated.

Objects are built once per variant (a SEG with and without empty frames is two objects, with two
UIDs) and shared by every profile that wants that variant. Each is written atomically under
``<attempt>/objects/`` and then validated before anything is queued for export: it must read back
with highdicom, and reference only instances the node holds. A failure is a ``ResultError``: the
job FAILS with its message, for the admin.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from dicom_node.settings import ProfileSettings
from workers.inference.decode import read_instance
from workers.inference.manifest import Manifest
from workers.results.keyimages import build_key_images
from workers.results.pmap import build_confidence_map
from workers.results.seg import Mask, ResultError, build_seg
from workers.results.sources import repair
from workers.results.sr import build_sr

OBJECTS = "objects"


def load_mask(path: Path) -> Mask:
    with np.load(path) as saved:  # an NpzFile holds its file open until closed
        return Mask(
            labels=saved["labels"],
            sop_instance_uids=tuple(str(u) for u in saved["sop_instance_uids"]),
            frame_numbers=tuple(int(n) for n in saved["frame_numbers"]),
            probabilities=saved["probabilities"] if "probabilities" in saved.files else None,
            confidence=saved["confidence"] if "confidence" in saved.files else None,
        )


def write_object(ds: Dataset, folder: Path, kind: str) -> Path:
    """``<kind>-<SOPInstanceUID>.dcm``, written to a temp name, fsynced, renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
    temp = path.with_suffix(".tmp")
    with temp.open("wb") as f:
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
    seg_uid: str | None = None,
    previous: Sequence[str] = (),
) -> None:
    """Read the object back as its class, and check what it references exists: the sources, its
    SEG (for an SR) and the reports it replaces."""
    try:
        if kind == "seg":
            back: Dataset = hd.seg.segread(path)
        elif kind == "sr":
            back = hd.sr.srread(path)
        else:
            back = dcmread(path)
    except (InvalidDicomError, ValueError, KeyError, AttributeError, TypeError, OSError) as exc:
        raise ResultError(f"{kind} {path.name} does not read back: {exc}") from None
    refs = _referenced_uids(back) - {str(back.SOPInstanceUID)}
    if kind == "sr":
        if seg_uid not in refs:
            raise ResultError(f"SR {back.SOPInstanceUID} does not reference its SEG {seg_uid}")
        refs.discard(str(seg_uid))
    unknown = sorted(refs - known - set(previous))
    if unknown:
        raise ResultError(f"{kind} {back.SOPInstanceUID} references unknown instance {unknown[0]}")


def _entry(kind: str, path: Path, ds: Dataset, series_uid: str) -> dict[str, str]:
    return {
        "kind": kind,
        "path": str(path),
        "sop_class_uid": str(ds.SOPClassUID),
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_uid": series_uid,
    }


def _key_images(
    sources: Mapping[str, Dataset],
    source_paths: Mapping[str, Path],
    mask: Mask,
    manifest: Manifest,
    *,
    folder: Path,
    series_uid: str,
    count: int,
    weights_sha256: str,
    at: datetime,
) -> list[dict[str, str]]:
    images = build_key_images(
        dict(sources),
        dict(source_paths),
        mask,
        manifest,
        count=count,
        weights_sha256=weights_sha256,
        at=at,
    )
    entries = []
    for sc in images:
        path = write_object(sc, folder, "sc")
        validate(path, "sc", set(source_paths))
        entries.append(_entry("sc", path, sc, series_uid))
    return entries


def build_results(
    summary: dict[str, Any],
    manifest: Manifest,
    profiles: Mapping[str, ProfileSettings],
    source_paths: Mapping[str, Path],
    *,
    at: datetime,
    previous: Mapping[str, Sequence[Path]] | None = None,
    workers: int = 0,
    confidence: bool = False,
) -> dict[str, Any]:
    """Objects per profile name, plus build timings. ``previous``: per profile, the SR files of
    the results these replace (``PredecessorDocumentsSequence``). ``confidence``: a Parametric
    Map of the model's confidence goes with every SEG (the rule's ``confidence_map``)."""
    job_dir = Path(summary["path"])
    folder = job_dir / OBJECTS
    weights = summary.get("weights_sha256", "")
    per_profile: dict[str, list[dict[str, str]]] = {name: [] for name in profiles}
    built: dict[tuple[str, ...], tuple[Dataset, dict[str, str]]] = {}
    key_images: dict[tuple[str, int], list[dict[str, str]]] = {}
    timings = {"seg": 0.0, "pm": 0.0, "sr": 0.0, "sc": 0.0, "validate": 0.0}
    notes: dict[str, None] = {}  # source attributes repaired before copying, in order
    if "seg" not in manifest.outputs:
        return {"objects": per_profile, "timings_s": timings, "source_repairs": list(notes)}

    def once(key: tuple[str, ...], kind: str, make: Any, **check: Any) -> dict[str, str]:
        if key not in built:
            t0 = time.perf_counter()
            ds = make()
            t1 = time.perf_counter()
            path = write_object(ds, folder, kind)
            validate(path, kind, set(source_paths), **check)
            timings[kind] += t1 - t0
            timings["validate"] += time.perf_counter() - t1
            built[key] = (ds, _entry(kind, path, ds, key[1]))
        return built[key][1]

    for series in summary["series"]:
        mask = load_mask(job_dir / series["mask"])
        missing = [u for u in mask.sop_instance_uids if u not in source_paths]
        if missing:
            raise ResultError(f"source instance {missing[0]} is no longer stored")
        uids = list(dict.fromkeys(mask.sop_instance_uids))
        sources = {u: read_instance(source_paths[u]) for u in uids}
        for ds in sources.values():
            notes.update(dict.fromkeys(repair(ds)))
        suid = series["series_uid"]
        for name, profile in profiles.items():
            omit = str(profile.omit_empty_frames)
            if profile.seg:
                seg_key = ("seg", suid, omit)
                per_profile[name].append(
                    once(
                        seg_key,
                        "seg",
                        partial(
                            build_seg,
                            [sources[u] for u in uids],
                            mask,
                            manifest,
                            weights_sha256=weights,
                            at=at,
                            omit_empty_frames=profile.omit_empty_frames,
                            workers=workers,
                        ),
                    )
                )
                if confidence:
                    per_profile[name].append(
                        once(
                            ("pm", suid),
                            "pm",
                            partial(
                                build_confidence_map,
                                [sources[u] for u in uids],
                                mask,
                                manifest,
                                weights_sha256=weights,
                                at=at,
                            ),
                        )
                    )
                wants_sr = {"measurements", "findings"} & set(manifest.outputs)
                if profile.sr and wants_sr:
                    seg = built[seg_key][0]
                    areas = (mask.labels > 0).reshape(len(mask.labels), -1).sum(axis=1)
                    key_image = sources[mask.sop_instance_uids[int(np.argmax(areas))]]
                    before = [dcmread(p) for p in (previous or {}).get(name, ())]
                    per_profile[name].append(
                        once(
                            ("sr", suid, omit, profile.sr_class),
                            "sr",
                            partial(
                                build_sr,
                                seg,
                                key_image,
                                series["labels"],
                                manifest,
                                weights_sha256=weights,
                                at=at,
                                sr_class=profile.sr_class,
                                previous=before,
                            ),
                            seg_uid=str(seg.SOPInstanceUID),
                            previous=[str(b.SOPInstanceUID) for b in before],
                        )
                    )
            if profile.key_images:
                key = (suid, profile.key_images)
                if key not in key_images:
                    t0 = time.perf_counter()
                    key_images[key] = _key_images(
                        sources,
                        source_paths,
                        mask,
                        manifest,
                        folder=folder,
                        series_uid=suid,
                        count=profile.key_images,
                        weights_sha256=weights,
                        at=at,
                    )
                    timings["sc"] += time.perf_counter() - t0
                per_profile[name].extend(key_images[key])
    return {"objects": per_profile, "timings_s": timings, "source_repairs": list(notes)}
