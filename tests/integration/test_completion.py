"""Study completion on evidence, with a real SCP, a pynetdicom sender and the sweeper.

Settings here: settle 1 s after every delivering association is released, quiet period 4 s.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path

from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node import statuses
from dicom_node.db.models import AuditEvent, Instance
from tests.helpers import NODE_AE, RunningNode, fresh_series, scu, send_datasets, wait_for


def completions(node: RunningNode, study_uid: str) -> list[str]:
    with node.engine.connect() as conn:
        return list(
            conn.execute(
                select(AuditEvent.event_type)
                .where(AuditEvent.study_uid == study_uid)
                .order_by(AuditEvent.at, AuditEvent.id)
            ).scalars()
        )


def last_instance_at(node: RunningNode) -> datetime:
    with node.engine.connect() as conn:
        return max(conn.execute(select(Instance.received_at)).scalars())


def test_one_association_completes_within_settle_after_release(
    node: RunningNode, ct_slice: Path
) -> None:
    series = fresh_series(ct_slice, 10)
    uid = series[0].StudyInstanceUID
    assert send_datasets(node.port, series) == [statuses.SUCCESS] * 10
    released = time.monotonic()
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "study COMPLETE")
    waited = time.monotonic() - released
    study = node.study(uid)
    assert study["completion_reason"] == "settled after release"
    assert 0.8 <= waited < 2.5  # settle 1 s + a sweep (0.1 s) + slack; never before settle
    assert study["instances"] == 10


def test_three_series_with_pauses_on_one_association_complete_once(
    node: RunningNode, ct_slice: Path
) -> None:
    """Pauses (2 s) longer than settle but shorter than the quiet period: the open association
    is evidence that more may come, so the study must not complete between series."""
    uid = generate_uid()
    assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    for i in range(3):
        for ds in fresh_series(ct_slice, 3, study_uid=uid):
            assert assoc.send_c_store(ds).Status == statuses.SUCCESS
        if i < 2:
            time.sleep(2.0)
            assert node.study(uid)["state"] == "RECEIVING", "completed between series"
    assoc.release()
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "study COMPLETE")
    study = node.study(uid)
    assert (study["series"], study["instances"], study["times_completed"]) == (3, 9, 1)
    assert datetime.fromisoformat(study["completed_at"]) > last_instance_at(node)
    assert completions(node, uid) == ["study.receiving", "study.completed"]


def test_three_associations_with_short_gaps_complete_once(
    node: RunningNode, ct_slice: Path
) -> None:
    uid = generate_uid()
    for _ in range(3):
        assert set(send_datasets(node.port, fresh_series(ct_slice, 3, study_uid=uid))) == {0}
        time.sleep(0.3)  # shorter than settle
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "study COMPLETE")
    time.sleep(1.5)
    study = node.study(uid)
    assert (study["series"], study["instances"], study["times_completed"]) == (3, 9, 1)
    assert completions(node, uid) == ["study.receiving", "study.completed"]


def test_late_series_reopens_and_completes_again(node: RunningNode, ct_slice: Path) -> None:
    uid = generate_uid()
    first = fresh_series(ct_slice, 4, study_uid=uid)
    send_datasets(node.port, first)
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "first completion")
    late = fresh_series(ct_slice, 2, study_uid=uid)
    resend = first[:2]  # a re-send of instances already held must not count twice
    assert send_datasets(node.port, [*late, *resend]) == [statuses.SUCCESS] * 4
    assert node.study(uid)["state"] in {"REOPENED", "COMPLETE"}
    wait_for(lambda: node.study(uid)["times_completed"] == 2, 5, "second completion")
    study = node.study(uid)
    assert (study["state"], study["series"], study["instances"]) == ("COMPLETE", 2, 6)
    events = completions(node, uid)
    assert events.count("study.reopened") == 1
    assert events.count("study.completed") == 2
    assert events.index("study.reopened") > events.index("study.completed")


def test_aborted_sender_waits_for_the_quiet_period(node: RunningNode, ct_slice: Path) -> None:
    """An abort is no evidence of a finished study: only the quiet period completes it."""
    series = fresh_series(ct_slice, 2)
    uid = series[0].StudyInstanceUID
    assoc = scu().associate("127.0.0.1", node.port, ae_title=NODE_AE)
    for ds in series:
        assoc.send_c_store(ds)
    assoc.abort()
    time.sleep(2.0)
    assert node.study(uid)["state"] == "RECEIVING"
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "quiet period completion")
    assert node.study(uid)["completion_reason"] == "quiet period"
