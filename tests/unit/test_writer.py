from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dicom_node import statuses
from dicom_node.receive.handlers import status_for
from dicom_node.storage.errors import StorageRefusedError
from dicom_node.storage.writer import AtomicWriter


@pytest.fixture
def writer(tmp_path: Path) -> AtomicWriter:
    (tmp_path / "incoming").mkdir()
    return AtomicWriter(tmp_path / "incoming", fsync=True, min_free_bytes=0)


def test_keep_first_and_overwrite(writer: AtomicWriter, tmp_path: Path) -> None:
    final = tmp_path / "instances/1.2/1.3/1.4.dcm"
    assert not writer.write(final, [b"first"], overwrite=False).existed
    again = writer.write(final, [b"second"], overwrite=False)
    assert again.existed and final.read_bytes() == b"first"
    replaced = writer.write(final, [b"third"], overwrite=True)
    assert replaced.existed and final.read_bytes() == b"third"
    assert list((tmp_path / "incoming").iterdir()) == []


def test_series_folder_removed_between_instances(writer: AtomicWriter, tmp_path: Path) -> None:
    first = tmp_path / "instances/1.2/1.3/1.4.dcm"
    writer.write(first, [b"a"], overwrite=False)
    shutil.rmtree(tmp_path / "instances/1.2")
    second = tmp_path / "instances/1.2/1.3/1.5.dcm"
    assert not writer.write(second, [b"b"], overwrite=False).existed
    assert second.read_bytes() == b"b"


def test_reserve_refuses_before_writing(tmp_path: Path) -> None:
    (tmp_path / "incoming").mkdir()
    free = shutil.disk_usage(tmp_path).free
    writer = AtomicWriter(tmp_path / "incoming", fsync=False, min_free_bytes=free + 1)
    with pytest.raises(StorageRefusedError) as err:
        writer.write(tmp_path / "instances/1/2/3.dcm", [b"x"], overwrite=False)
    assert status_for(err.value) == statuses.OUT_OF_RESOURCES_DISK_RESERVE
    assert not (tmp_path / "instances").exists()
    assert not writer.has_reserve()
