"""Everything the node writes may hold PHI: after a full pipeline run through ``dicom-node serve``
started under umask 022, every file is 0600 and every folder 0700 (``storage.modes``)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from dicom_node.domain import JobState
from tests.scenario import Scenario


def test_every_file_of_a_pipeline_run_is_private_under_umask_022(
    tmp_path: Path, ct_dir: Path
) -> None:
    old = os.umask(0o022)
    s = Scenario(tmp_path, ct_dir, broker=None)
    try:
        s.node.start()
        uid = s.send()
        s.wait_state(uid, JobState.DONE, 180)
    finally:
        s.close()
        os.umask(old)
    storage = tmp_path / "storage"
    written = [storage, *storage.rglob("*")]
    written += list(tmp_path.glob("index.db*"))
    names = {p.name for p in written}
    assert "summary.json" in names and "index.db" in names
    assert sum(p.suffix == ".dcm" for p in written) > 54  # the instances and the results
    loose = [
        f"{p.relative_to(tmp_path)} {stat.filemode(p.stat().st_mode)}"
        for p in written
        if p.stat().st_mode & 0o077
    ]
    assert loose == []
