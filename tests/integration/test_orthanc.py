"""Orthanc as the legacy PACS: it pushes a study to the node (POST /modalities/{id}/store)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from dicom_node.db.models import Instance
from tests.helpers import NODE_AE, RunningNode, wait_for
from tests.peers import orthanc


def test_orthanc_sends_a_study(node: RunningNode, ct_dir: Path, tmp_path: Path) -> None:
    files = sorted(p for p in ct_dir.iterdir() if p.name != "DIRFILE")
    modalities = {"node": [NODE_AE, "127.0.0.1", node.port]}
    with orthanc(tmp_path / "orthanc", modalities) as pacs:
        study_ids = {pacs.api("POST", "/instances", p.read_bytes())["ParentStudy"] for p in files}
        assert len(study_ids) == 1
        job = pacs.api("POST", "/modalities/node/store", study_ids.pop().encode())
        assert job["InstancesCount"] == len(files), job
        assert job["FailedInstancesCount"] == 0, job
    with node.engine.connect() as conn:
        sops = set(conn.execute(select(Instance.sop_instance_uid)).scalars())
    assert len(sops) == len(files)
    study = node.studies()[0]
    assert (study["series"], study["instances"]) == (1, len(files))
    wait_for(
        lambda: node.study(study["study_uid"])["state"] == "COMPLETE",
        10,
        "study complete after Orthanc released",
    )
