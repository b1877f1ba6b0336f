"""What the node says it found: the start-up block of ``dicom-node serve`` (on stdout, beside the
JSON logs on stderr) and ``dicom-node doctor``, with real peers: dcmtk storescp as a
destination that answers, a closed port as one that does not, a real Redis or a port with
none, and the built-in model with its weights intact or changed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from dicom_node.settings import BUILTIN_MODELS
from tests.helpers import free_port, wait_for
from tests.peers import NodeProcess, echo_ok, storescp, write_node_config

NODE_AE = "DICOM_NODE"


def doctor(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "doctor", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def lines_of(block: str) -> dict[str, list[tuple[str, str]]]:
    """topic -> [(mark, text)] of a rendered block."""
    found: dict[str, list[tuple[str, str]]] = {}
    for line in block.splitlines()[1:-1]:
        mark, rest = line[1], line[3:]
        topic, _, text = rest.partition("  ")
        found.setdefault(topic.strip(), []).append((mark, text.strip()))
    return found


def test_serve_reports_what_it_found_once_receiving(tmp_path: Path) -> None:
    port = free_port()
    with storescp(tmp_path / "archive") as archive_port:
        config = write_node_config(
            tmp_path / "node.toml",
            port=port,
            workdir=tmp_path / "data",
            extra=(
                '[[rules]]\nname = "ct"\nmodels = ["ct-tissue"]\nmatch = { modality = ["CT"] }\n'
                '[[rules]]\nname = "mr"\nmodels = ["mr-brain"]\nmatch = { modality = ["MR"] }\n'
                '[[destinations]]\nname = "archive"\nae_title = "STORESCP"\n'
                f'host = "127.0.0.1"\nport = {archive_port}\n'
                '[[destinations]]\nname = "down"\nae_title = "PACS"\n'
                f'host = "127.0.0.1"\nport = {free_port()}\n'
            ),
        )
        node = NodeProcess(config, tmp_path / "node.log")
        node.start()
        assert node.report is not None
        try:
            wait_for(lambda: echo_ok(port, NODE_AE), 60, "the node answering C-ECHO")
            wait_for(lambda: "problem(s)" in node.report.read_text(), 30, "the start-up block")
        finally:
            node.stop()  # and every stderr line was JSON: the block is on stdout alone
    block = node.report.read_text()
    assert block.startswith("dicom-node ") and " is receiving\n" in block
    found = lines_of(block)
    assert found["DICOM"] == [(" ", f"{NODE_AE} on 127.0.0.1:{port}, no TLS, any calling AE title")]
    assert found["data dir"] == [(" ", os.environ["DICOM_NODE_HOME"])]  # none set: the default
    assert found["database"] == [(" ", f"sqlite:///{tmp_path / 'data' / 'index.db'}")]
    assert found["storage"] == [(" ", str(tmp_path / "data" / "storage"))]
    [(mark, model)] = found["model"]
    assert mark == " " and model.startswith("ct-tissue 1.0.0 (monai_bundle, ok) in ")
    assert found["rule"] == [
        (" ", "ct: CT -> ct-tissue"),
        ("X", "mr: MR -> mr-brain (not usable: mr-brain)"),
    ]
    archive, down = found["destination"]
    assert archive == (" ", f"archive: STORESCP@127.0.0.1:{archive_port} (default), C-ECHO ok")
    assert down[0] == "!" and "C-ECHO failed" in down[1]  # a warning: the outbox waits for it
    assert found["admin UI"] == [(" ", "disabled ([admin] enabled = false)")]
    [(mark, users)] = found["users"]
    assert mark == "!" and users.startswith("0 account(s), 0 admin(s): nobody can act in the UI")
    assert users.endswith("`dicom-node users add NAME --role admin`")
    assert block.splitlines()[-1].strip() == "1 problem(s), 2 warning(s)"


def test_doctor_passes_a_sound_node_and_fails_on_each_problem(tmp_path: Path) -> None:
    port = free_port()
    with storescp(tmp_path / "archive") as archive_port:
        dest = (
            '[[destinations]]\nname = "archive"\nae_title = "STORESCP"\n'
            f'host = "127.0.0.1"\nport = {archive_port}\n'
        )
        config = write_node_config(
            tmp_path / "node.toml", port=port, workdir=tmp_path / "data", extra=dest
        )
        first = doctor(config)  # nothing made yet: a warning, and nothing is created
        assert first.returncode == 0, first.stdout
        assert lines_of(first.stdout)["index"] == [("!", "none yet: `dicom-node serve` makes it")]
        assert not (tmp_path / "data" / "index.db").exists()
        subprocess.run(
            [sys.executable, "-m", "dicom_node", "db", "upgrade", "--config", str(config)],
            check=True,
            capture_output=True,
        )
        sound = doctor(config)
        assert sound.returncode == 0, sound.stdout
        found = lines_of(sound.stdout)
        assert found["index"][0][1].startswith("migrations at head (")
        assert found["disk"][0][1].split()[1:3] == ["GB", "free"]
        assert found["destination"] == [
            (" ", f"archive: STORESCP@127.0.0.1:{archive_port} (default), C-ECHO ok")
        ]
        assert found["broker"] == [(" ", "none (embedded workers)")]

    # the destination stops answering: a problem for doctor
    gone = doctor(config)
    assert gone.returncode == 1
    assert lines_of(gone.stdout)["destination"][0][0] == "X"

    # a rule whose model is nowhere on the search path, and the disk reserve reached
    rules = write_node_config(
        tmp_path / "rules.toml",
        port=port,
        workdir=tmp_path / "data",
        extra='[[rules]]\nname = "mr"\nmodels = ["mr-brain"]\nmatch = { modality = ["MR"] }\n',
    )
    text = rules.read_text()
    assert "min_free_mb = 10\n" in text
    rules.write_text(text.replace("min_free_mb = 10\n", "min_free_mb = 1000000000\n"))
    done = doctor(rules)
    assert done.returncode == 1
    found = lines_of(done.stdout)
    assert found["rule"] == [("X", "mr: MR -> mr-brain (not usable: mr-brain)")]
    [(mark, disk)] = found["disk"]
    assert mark == "X" and disk.endswith("(refuses C-STORE below 1000000000 MB)")

    # a broker nobody listens on
    closed = free_port()
    broker = write_node_config(
        tmp_path / "broker.toml",
        port=port,
        workdir=tmp_path / "data",
        extra=f'[queue]\nbroker_url = "redis://127.0.0.1:{closed}/0"\n',
    )
    done = doctor(broker)
    assert done.returncode == 1
    [(mark, text)] = lines_of(done.stdout)["broker"]
    assert mark == "X" and text.startswith(f"redis://127.0.0.1:{closed}/0 unreachable")
    redis_ok = write_node_config(
        tmp_path / "redis.toml",
        port=port,
        workdir=tmp_path / "data",
        extra='[queue]\nbroker_url = "redis://127.0.0.1:6379/0"\n',
    )
    assert lines_of(doctor(redis_ok).stdout)["broker"] == [
        (" ", "redis://127.0.0.1:6379/0 reachable")
    ]

    # the site's copy of the model has weights that fail their sha256: it is the one used
    site_models = tmp_path / "data" / "models"
    shutil.copytree(BUILTIN_MODELS / "ct-tissue", site_models / "ct-tissue")
    with (site_models / "ct-tissue" / "models" / "model.pt").open("ab") as f:
        f.write(b"\0")
    changed = write_node_config(
        tmp_path / "changed.toml",
        port=port,
        workdir=tmp_path / "data",
        extra=f'[models]\nroot = "{site_models}"\n',
    )
    done = doctor(changed)
    assert done.returncode == 1
    found = lines_of(done.stdout)
    [(mark, text)] = found["model"]
    assert mark == "X" and "weights fail the sha256 check" in text and str(site_models) in text
