"""A SOP Instance UID already stored under another Study/Series Instance UID.

Decision: refused with 0xC003 and an Error Comment naming the conflict; nothing of the new study
or series is made, no file is left, the stored study is not reopened, and an
``instance.conflict`` audit event names both places. A file left by an older node in that
conflict is quarantined by ``db reindex``, and a second ``db reindex`` changes nothing.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from dicom_node.db.models import AuditEvent, Instance, Series, Study
from tests.helpers import RunningNode, cli, config_for, send_datasets, wait_for


def audit(node: RunningNode) -> list[tuple[str, str | None]]:
    with node.engine.connect() as conn:
        return [
            (e, s)
            for e, s in conn.execute(
                select(AuditEvent.event_type, AuditEvent.study_uid).order_by(AuditEvent.id)
            )
        ]


def counts(node: RunningNode) -> tuple[int, int, int]:
    with node.engine.connect() as conn:
        return (
            conn.execute(select(func.count()).select_from(Study)).scalar_one(),
            conn.execute(select(func.count()).select_from(Series)).scalar_one(),
            conn.execute(select(func.count()).select_from(Instance)).scalar_one(),
        )


def test_a_sop_uid_conflict_is_refused_audited_and_leaves_nothing(
    node: RunningNode, ct_slice: Path
) -> None:
    first = dcmread(ct_slice)
    assert send_datasets(node.port, [first]) == [0]
    uid = str(first.StudyInstanceUID)
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 10, "complete")
    before = counts(node)

    other = copy.deepcopy(first)
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    ae_status = send_datasets(node.port, [other])
    assert ae_status == [0xC003]
    assert counts(node) == before
    assert not list((node.root / "instances" / str(other.StudyInstanceUID)).rglob("*.dcm"))
    assert node.study(uid)["state"] == "COMPLETE"  # not reopened
    with node.engine.connect() as conn:
        details = conn.execute(
            select(AuditEvent.details).where(AuditEvent.event_type == "instance.conflict")
        ).scalar_one()
    assert details["stored_study_uid"] == uid
    assert details["stored_series_uid"] == str(first.SeriesInstanceUID)
    assert details["received_study_uid"] == str(other.StudyInstanceUID)
    assert details["received_series_uid"] == str(other.SeriesInstanceUID)


def test_reindex_quarantines_a_conflict_once_and_a_second_run_changes_nothing(
    node: RunningNode, ct_slice: Path, tmp_path: Path
) -> None:
    first = dcmread(ct_slice)
    assert send_datasets(node.port, [first]) == [0]
    uid = str(first.StudyInstanceUID)
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 10, "complete")
    # what an older node left: the same SOP Instance UID filed under another study and series
    other = copy.deepcopy(first)
    other.StudyInstanceUID, other.SeriesInstanceUID = generate_uid(), generate_uid()
    left = (
        node.root
        / f"instances/{other.StudyInstanceUID}/{other.SeriesInstanceUID}/{other.SOPInstanceUID}.dcm"
    )
    left.parent.mkdir(parents=True)
    other.save_as(left, enforce_file_format=True)
    shutil.copystat(ct_slice, left)
    cfg = config_for(node, tmp_path)

    done = cli("db", "reindex", config=cfg)
    assert done.returncode == 0, done.stderr
    assert "indexed 0, quarantined 1" in done.stdout
    assert not left.exists()
    events, state, totals = audit(node), node.study(uid), counts(node)
    assert [e for e, _ in events].count("recovery.quarantined") == 1
    assert [e for e, _ in events].count("instance.conflict") == 1

    again = cli("db", "reindex", config=cfg)
    assert again.returncode == 0, again.stderr
    assert "indexed 0, quarantined 0" in again.stdout
    assert audit(node) == events
    assert counts(node) == totals
    assert node.study(uid) == state
