"""Installed as a hospital installs it: a wheel built from the source tree (not an editable
install), in a folder of its own, run from a folder that has nothing to do with the project, with
nothing configured but the port. The reference model is inside the wheel, the data lives under
one data directory, and a real CT goes through the whole pipeline to a DONE job."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import REPO, free_port, wait_for
from tests.peers import dcmtk, echo_ok

NODE_AE = "DICOM_NODE"
MODEL_FILES = ("manifest.toml", "models/model.pt", "configs/inference.json", "README.md")


@pytest.fixture(scope="module")
def site_packages(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree (its sources copied as the Dockerfiles copy them), installed
    with ``pip install --target`` into a folder that is first on PYTHONPATH."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for package in ("dicom_node", "workers"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(work / "dist"), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (work / "dist").glob("dicom_node-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in MODEL_FILES:
        assert f"dicom_node/models/ct-tissue/{name}" in names, name
    target = work / "site"
    subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return target


def env_for(site: Path, home: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    return {
        **env,
        "PYTHONPATH": str(site),
        "DICOM_NODE_HOME": str(home),
        "DICOM_NODE_NODE__HOST": "127.0.0.1",
        "DICOM_NODE_NODE__PORT": str(port),
        "DICOM_NODE_NODE__SCP_PROCESSES": "1",
        "DICOM_NODE_STORAGE__MIN_FREE_MB": "10",
        "DICOM_NODE_COMPLETION__QUIET_PERIOD_S": "3",
        "DICOM_NODE_COMPLETION__SETTLE_S": "1",
        "DICOM_NODE_ADMIN__ENABLED": "false",
    }


def cli(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    cwd = tmp_path / "somewhere-else"
    cwd.mkdir()
    return cwd


@pytest.fixture
def node(
    site_packages: Path, tmp_path: Path, elsewhere: Path
) -> Iterator[tuple[dict[str, str], int]]:
    port = free_port()
    env = env_for(site_packages, tmp_path / "home", port)
    with (tmp_path / "node.log").open("ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve"],
            env=env,
            cwd=elsewhere,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        wait_for(lambda: echo_ok(port, NODE_AE), 60, "the installed node answering C-ECHO")
        yield env, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def test_the_installed_wheel_runs_its_own_code_and_finds_its_model_anywhere(
    site_packages: Path, tmp_path: Path, elsewhere: Path
) -> None:
    env = env_for(site_packages, tmp_path / "home", free_port())
    done = subprocess.run(
        [sys.executable, "-c", "import dicom_node, workers; print(dicom_node.__file__)"],
        env=env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == str(site_packages / "dicom_node" / "__init__.py")
    listed = cli(env, elsewhere, "models", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    (model,) = json.loads(listed.stdout)
    assert (model["name"], model["status"]) == ("ct-tissue", "ok")
    assert model["folder"] == str(site_packages / "dicom_node" / "models" / "ct-tissue")
    # before any node ran with this data dir, a read command says so and makes nothing
    studies = cli(env, elsewhere, "studies")
    assert studies.returncode == 1
    assert f"data dir {tmp_path / 'home'}" in studies.stderr
    assert "no node has used this data dir yet" in studies.stderr
    assert not (tmp_path / "home").exists()


@pytest.mark.filterwarnings("ignore::UserWarning:highdicom.*")
def test_the_installed_wheel_runs_the_whole_pipeline_with_no_config(
    node: tuple[dict[str, str], int], tmp_path: Path, elsewhere: Path, ct_dir: Path
) -> None:
    """The default rule sends CT to the built-in ct-tissue model; the embedded worker runs it
    from the wheel; everything it writes is under the data dir, nothing in the working folder."""
    env, port = node
    files = sorted(str(p) for p in ct_dir.glob("I*"))
    sent = dcmtk("storescu", "-aec", NODE_AE, "127.0.0.1", port, *files)
    assert sent.returncode == 0, sent.stderr[-2000:]

    def done() -> dict[str, Any] | None:
        listed = cli(env, elsewhere, "jobs", "--json")
        jobs = json.loads(listed.stdout) if listed.returncode == 0 else []
        assert all(j["state"] != "FAILED" for j in jobs), jobs
        return next((j for j in jobs if j["state"] == "DONE"), None)

    job = wait_for(done, 300, "the ct-tissue job DONE", interval=2)
    assert (job["rule"], job["model"]) == ("ct-tissue", "ct-tissue")
    home = tmp_path / "home"
    assert (home / "dicom-node.db").is_file()
    assert len(list((home / "storage").rglob("*.dcm"))) >= len(files)
    assert list(elsewhere.iterdir()) == []
