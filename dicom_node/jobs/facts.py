"""Read a study's series from the index as ``SeriesFacts`` for the routing rules."""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import Connection, func, select

from dicom_node.db.models import Association, Instance, Series, Study
from dicom_node.jobs.rules import BACKSLASH, SeriesFacts


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
