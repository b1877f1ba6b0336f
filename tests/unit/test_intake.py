"""The intake on SQLite, through its typed refusals and the one status table: every refusal an
admin can read, nothing written or indexed for a refused instance, the first copy kept
(``dicom_node.storage.intake`` + ``dicom_node.receive.handlers.STATUS_FOR``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import generate_uid
from pynetdicom import dsutils
from sqlalchemy import Engine, func, select

from dicom_node import statuses
from dicom_node.db.models import Instance
from dicom_node.receive.handlers import STATUS_FOR, status_for
from dicom_node.storage import errors
from dicom_node.storage.index import AssociationCache
from dicom_node.storage.intake import Intake, Stored, StoreRequest
from tests.rows import instance, make_intake, request, sqlite_index


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return sqlite_index(tmp_path)


def stored(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(Instance)).scalar_one())


def refusal(intake: Intake, req: StoreRequest) -> tuple[int, str]:
    with pytest.raises(errors.StorageRefusedError) as caught:
        intake.accept(req, AssociationCache())
    return status_for(caught.value), caught.value.comment


def test_a_good_instance_is_written_indexed_and_its_duplicate_kept_first(
    engine: Engine, tmp_path: Path
) -> None:
    intake = make_intake(engine, tmp_path / "storage")
    ds = instance()
    first = intake.accept(request(ds), AssociationCache())
    assert first.stored is Stored.NEW
    path = intake.layout.path_for(first.key)
    assert dcmread(path).SOPInstanceUID == ds.SOPInstanceUID
    same = ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
    again = instance(**{keyword: ds.get(keyword) for keyword in same})
    again.InstanceNumber = 2
    assert intake.accept(request(again), AssociationCache()).stored is Stored.DUPLICATE_KEPT_FIRST
    assert dcmread(path).InstanceNumber == 1 and stored(engine) == 1


@pytest.mark.parametrize(
    ("case", "status", "comment"),
    [
        ("bad request UID", statuses.CANNOT_UNDERSTAND_INVALID_UID, "invalid request"),
        ("other SOP Instance", statuses.DATASET_DOES_NOT_MATCH_SOP_CLASS, "differs from request"),
        ("no Study UID", statuses.CANNOT_UNDERSTAND_MISSING_ATTRIBUTE, "missing StudyInstanceUID"),
        ("truncated", statuses.CANNOT_UNDERSTAND_UNPARSEABLE, "cut short at byte"),
        ("escaping UID", statuses.CANNOT_UNDERSTAND_INVALID_UID, "invalid"),
    ],
)
def test_each_refusal_has_its_status_and_leaves_nothing(
    engine: Engine, tmp_path: Path, case: str, status: int, comment: str
) -> None:
    intake = make_intake(engine, tmp_path / "storage")
    ds = instance()
    if case == "bad request UID":
        req = request(ds, sop_instance="1.2.x")
    elif case == "other SOP Instance":
        req = request(ds, sop_instance=generate_uid())
    elif case == "no Study UID":
        del ds.StudyInstanceUID
        req = request(ds)
    elif case == "truncated":
        body = dsutils.encode(ds, False, True)
        assert body is not None
        req = request(ds, raw=body[:-4])
    else:
        ds.SeriesInstanceUID = "../../etc"
        req = request(ds)
    got, said = refusal(intake, req)
    assert got == status and comment in said, (case, said)
    assert stored(engine) == 0 and not list(intake.layout.instances.rglob("*.dcm"))


def test_a_sop_instance_under_another_study_is_a_conflict_and_the_new_file_goes(
    engine: Engine, tmp_path: Path
) -> None:
    intake = make_intake(engine, tmp_path / "storage")
    ds = instance()
    intake.accept(request(ds), AssociationCache())
    moved = instance(SOPInstanceUID=ds.SOPInstanceUID)  # new study and series UIDs
    assert refusal(intake, request(moved))[0] == statuses.CANNOT_UNDERSTAND_UID_CONFLICT
    assert len(list(intake.layout.instances.rglob("*.dcm"))) == stored(engine) == 1


def test_below_the_disk_reserve_nothing_is_written(engine: Engine, tmp_path: Path) -> None:
    intake = make_intake(engine, tmp_path / "storage", reserve=1 << 62)
    got, said = refusal(intake, request(instance()))
    assert (got, said) == (statuses.OUT_OF_RESOURCES_DISK_RESERVE, "disk reserve reached")
    assert stored(engine) == 0


def test_every_storage_refusal_has_one_named_status() -> None:
    kinds = set(errors.StorageRefusedError.__subclasses__())
    assert kinds == set(STATUS_FOR)
    assert len(set(STATUS_FOR.values())) == len(STATUS_FOR)  # one reason, one status
    assert all(status in statuses.NAMES for status in STATUS_FOR.values())
