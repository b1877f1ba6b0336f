from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node import statuses
from dicom_node.domain import (
    STUDY_TRANSITIONS,
    IllegalTransitionError,
    StudyState,
    check_transition,
    is_valid_uid,
)
from dicom_node.receive.handlers import status_for
from dicom_node.storage.errors import StorageRefusedError
from dicom_node.storage.paths import InstanceKey, StorageLayout


@pytest.mark.parametrize("uid", ["1.2.3", "1.2.840.10008.5.1.4.1.1.2", "0", "1." + "2" * 62])
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        "1.2.",
        ".1.2",
        "1..2",
        "../etc",
        "1.2/3",
        "1.2\\3",
        "1.2.3\x00",
        "1 2",
        "1." + "2" * 63,
        None,
        1.2,
        "\uff11.\uff12",
    ],
)
def test_invalid_uids(uid: object) -> None:
    assert not is_valid_uid(uid)


def test_transition_table_refuses_unknown_moves() -> None:
    check_transition(STUDY_TRANSITIONS, StudyState.RECEIVING, StudyState.COMPLETE)
    check_transition(STUDY_TRANSITIONS, StudyState.COMPLETE, StudyState.REOPENED)
    check_transition(STUDY_TRANSITIONS, StudyState.REOPENED, StudyState.COMPLETE)
    for current, target in [
        (StudyState.RECEIVING, StudyState.REOPENED),
        (StudyState.COMPLETE, StudyState.RECEIVING),
        (StudyState.COMPLETE, StudyState.COMPLETE),
    ]:
        with pytest.raises(IllegalTransitionError):
            check_transition(STUDY_TRANSITIONS, current, target)


def test_instance_key_refuses_invalid_uids(tmp_path: Path) -> None:
    with pytest.raises(StorageRefusedError) as err:
        InstanceKey("1.2", "../../x", "1.3")
    assert status_for(err.value) == statuses.CANNOT_UNDERSTAND_INVALID_UID
    layout = StorageLayout(tmp_path)
    path = layout.path_for(InstanceKey("1.2", "1.3", "1.4"))
    assert path == tmp_path.resolve() / "instances/1.2/1.3/1.4.dcm"
