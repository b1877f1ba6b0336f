"""With the default configuration, the node's logs carry no patient names or IDs."""

from __future__ import annotations

from pathlib import Path

from pydicom import dcmread

from tests.helpers import NODE_AE, free_port, wait_for
from tests.peers import NodeProcess, dcmtk, echo_ok, write_node_config


def test_serve_logs_are_json_without_phi(tmp_path: Path, ct_dir: Path) -> None:
    port = free_port()
    cfg = write_node_config(
        tmp_path / "node.toml",
        port=port,
        workdir=tmp_path,
        extra="[completion]\nsettle_s = 0.5\nsweep_interval_s = 0.2\n",
    )
    log = tmp_path / "node.log"
    node = NodeProcess(cfg, log)
    node.start()
    try:
        wait_for(lambda: echo_ok(port, NODE_AE), 30, "node up")
        files = sorted(ct_dir.iterdir())  # the DIRFILE too: a refusal is logged
        dcmtk("storescu", "-nh", "-aec", NODE_AE, "127.0.0.1", port, *files, *files[:3], check=True)
        wait_for(lambda: b"study_completed" in log.read_bytes(), 15, "completion logged")
    finally:
        node.stop()
    assert node.report is not None
    text = log.read_text()
    report = node.report.read_text()  # the start-up block on stdout
    assert "is receiving" in report
    ds = dcmread(files[1], stop_before_pixels=True)
    assert "c_store_failed" in text and "c_store_duplicate" in text  # it did log those paths
    for phi in {str(ds.PatientName), str(ds.PatientID), str(ds.PatientName).replace("^", " ")}:
        assert phi and phi not in text, f"PHI in the logs: {phi!r}"
        assert phi not in report, f"PHI in the start-up report: {phi!r}"
    import json  # noqa: PLC0415

    events = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert events, "no JSON log lines"
    assert {e["event"] for e in events} >= {
        "node_started",
        "association_accepted",
        "study_completed",
        "association_ended",
    }
    assert any(e.get("study_uid") == ds.StudyInstanceUID for e in events)
