"""``dicom-node rules test``: a dry run on a real study with a localizer, a tilted axial CT and
secondary capture pages (the Philips head phantom)."""

from __future__ import annotations

import json
from pathlib import Path

from pydicom import dcmread

from tests.helpers import RunningNode, cli, config_for, send_datasets, wait_for


def test_rules_test_explains_the_choice(node: RunningNode, ct_dir: Path, tmp_path: Path) -> None:
    study_dir = ct_dir.parent  # S1000 localizer, S2010 axial (tilted), S4010 secondary capture
    files = sorted(p for p in study_dir.rglob("*") if p.is_file() and p.name != "DIRFILE")
    datasets = [dcmread(p) for p in files]
    send_datasets(node.port, datasets)
    uid = datasets[0].StudyInstanceUID
    wait_for(lambda: node.study(uid)["state"] == "COMPLETE", 5, "complete")
    cfg = config_for(node, tmp_path)
    cfg.write_text(
        cfg.read_text()
        + """
[[rules]]
name = "ct-head"
models = ["ct-tissue"]
[rules.match]
modality = ["CT"]
min_slices = 10

[[rules]]
name = "mr-only"
models = ["mr-model"]
[rules.match]
modality = ["MR"]
"""
    )
    done = cli("rules", "test", uid, "--json", config=cfg)
    assert done.returncode == 0, done.stderr
    ct, mr = json.loads(done.stdout)
    by_dir = {d.SeriesInstanceUID: p.parent.name for d, p in zip(datasets, files, strict=True)}
    assert [by_dir[s] for s in ct["chosen"]] == ["S2010"]
    reasons = {by_dir[s]: why for s, why in ct["reasons"].items()}
    assert "LOCALIZER" in reasons["S1000"]
    assert "DERIVED/SECONDARY" in reasons["S4010"]
    assert mr["chosen"] == [] and all("Modality CT" in r for r in mr["reasons"].values())

    text = cli("rules", "test", uid, config=cfg)
    assert "rule ct-head: runs ct-tissue (routine)" in text.stdout
    assert "rule mr-only: does not apply" in text.stdout
