"""Read a study's series from the index as ``SeriesFacts`` for the routing rules, and split
each into its stacks from the stored files' headers (``study_stack_facts``)."""

from __future__ import annotations

import threading
from collections import OrderedDict, defaultdict
from pathlib import Path

from pydicom.errors import InvalidDicomError
from sqlalchemy import Connection, func, select

from dicom_node.db.models import Association, Instance, Series, Study
from dicom_node.jobs.rules import BACKSLASH, SeriesFacts, stack_facts
from dicom_node.jobs.stacks import GeometryError, Stack, series_stacks
from dicom_node.logs import get_logger

log = get_logger(__name__)


def study_series_facts(conn: Connection, study_uid: str) -> list[SeriesFacts] | None:
    """``None`` if the study is not in the index."""
    study_id = conn.execute(
        select(Study.id).where(Study.study_uid == study_uid)
    ).scalar_one_or_none()
    if study_id is None:
        return None
    rows = conn.execute(
        select(Series.__table__, func.count(Instance.id).label("n"))
        .join(Instance, Instance.series_id == Series.id, isouter=True)
        .where(Series.study_id == study_id)
        .group_by(Series.id)
        .order_by(Series.series_number, Series.id)
    ).all()
    aes: dict[int, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for series_id, calling, called in conn.execute(
        select(Instance.series_id, Association.calling_ae, Association.called_ae)
        .distinct()
        .join(Association, Association.id == Instance.association_id)
        .join(Series, Series.id == Instance.series_id)
        .where(Series.study_id == study_id)
    ):
        aes[series_id][0].add(calling)
        aes[series_id][1].add(called)
    return [
        SeriesFacts(
            series_uid=r.series_uid,
            modality=r.modality,
            sop_class_uid=r.sop_class_uid,
            series_description=r.series_description,
            body_part=r.body_part,
            image_type=tuple(r.image_type.split(BACKSLASH)) if r.image_type else (),
            orientation=r.orientation,
            slice_thickness_mm=r.slice_thickness_mm,
            instances=int(r.n),
            calling_aes=frozenset(aes[r.id][0]),
            called_aes=frozenset(aes[r.id][1]),
        )
        for r in rows
    ]


class _StackCache:
    """The stacks of recently routed series, keyed by what would change them (the series'
    instance count and newest instance row): the timeline does not re-read every header."""

    def __init__(self, size: int = 64) -> None:
        self.size = size
        self.entries: OrderedDict[tuple[str, str, int, int], list[Stack] | None] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[str, str, int, int]) -> tuple[bool, list[Stack] | None]:
        with self.lock:
            if key in self.entries:
                self.entries.move_to_end(key)
                return True, self.entries[key]
        return False, None

    def put(self, key: tuple[str, str, int, int], stacks: list[Stack] | None) -> None:
        with self.lock:
            self.entries[key] = stacks
            while len(self.entries) > self.size:
                self.entries.popitem(last=False)


_CACHE = _StackCache()


def _stacks(storage_root: Path, series_uid: str, paths: list[str]) -> list[Stack] | None:
    """``None`` when the series holds frames without geometry (SR, KO, a document) or a file
    cannot be read: the rules then see the series as a whole, and the worker says why."""
    try:
        return series_stacks([storage_root / p for p in sorted(paths)])
    except (GeometryError, InvalidDicomError, OSError, ValueError, KeyError) as exc:
        log.info("series_not_split", series_uid=series_uid, reason=str(exc)[:200])
        return None


def study_stack_facts(
    conn: Connection, study_uid: str, storage_root: Path
) -> list[SeriesFacts] | None:
    """The study's candidates for the rules: one per stack of every image series (one per
    series where it has no geometry). ``None`` if the study is not in the index."""
    series = study_series_facts(conn, study_uid)
    if series is None:
        return None
    files: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for series_uid, instance_id, path in conn.execute(
        select(Series.series_uid, Instance.id, Instance.path)
        .join(Instance, Instance.series_id == Series.id)
        .join(Study, Study.id == Series.study_id)
        .where(Study.study_uid == study_uid)
    ):
        files[series_uid].append((instance_id, path))
    out: list[SeriesFacts] = []
    for s in series:
        rows = files.get(s.series_uid, [])
        if not rows:
            out.append(s)
            continue
        key = (str(storage_root), s.series_uid, len(rows), max(i for i, _ in rows))
        hit, stacks = _CACHE.get(key)
        if not hit:
            stacks = _stacks(storage_root, s.series_uid, [p for _, p in rows])
            _CACHE.put(key, stacks)
        out += stack_facts(s, stacks) if stacks else [s]
    return out
