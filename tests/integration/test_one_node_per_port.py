"""One node per port: ``dicom-node serve`` binds its DICOM port once, exclusively, and its SCP
processes all accept on that one socket. A second node (or any program) on the port, or an
admin UI whose port is taken, stops the start with a message that says so, and the first node
keeps receiving. SCP processes die with their supervisor, so a restart finds the port free.
All with real ``dicom-node serve`` processes on loopback."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import free_port, wait_for
from tests.peers import NodeProcess, echo_ok, write_node_config

NODE_AE = "DICOM_NODE"


def serve(config: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (from /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.fixture
def first(tmp_path: Path) -> tuple[NodeProcess, int]:
    port = free_port()
    node = NodeProcess(
        write_node_config(tmp_path / "a.toml", port=port, workdir=tmp_path / "a"),
        tmp_path / "a.log",
    )
    node.start()
    try:
        wait_for(lambda: echo_ok(port, NODE_AE), 60, "the first node answering C-ECHO")
        yield node, port
    finally:
        node.kill_if_running()


def test_a_second_node_on_the_same_port_does_not_start(
    first: tuple[NodeProcess, int], tmp_path: Path
) -> None:
    node, port = first
    second = write_node_config(tmp_path / "b.toml", port=port, workdir=tmp_path / "b")
    done = serve(second)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"port {port} is in use by another process" in done.stderr
    assert not (tmp_path / "b").exists()  # it stopped before touching anything
    assert echo_ok(port, NODE_AE)  # and the first node still answers, alone
    assert node.proc is not None and node.proc.poll() is None


def test_any_program_on_the_port_stops_the_start(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        done = serve(write_node_config(tmp_path / "n.toml", port=port, workdir=tmp_path / "n"))
    assert done.returncode == 2
    assert f"port {port} is in use by another process" in done.stderr


def test_an_admin_ui_that_cannot_listen_is_a_start_up_error(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        admin_port = taken.getsockname()[1]
        config = write_node_config(
            tmp_path / "n.toml",
            port=free_port(),
            workdir=tmp_path / "n",
            extra=f'\n[admin]\nenabled = true\nhost = "127.0.0.1"\nport = {admin_port}\n',
        )
        done = serve(config)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"the admin UI cannot listen on 127.0.0.1:{admin_port}" in done.stderr
    assert "enabled = false" in done.stderr  # what to do about it


def test_scp_processes_die_with_their_supervisor(
    first: tuple[NodeProcess, int], tmp_path: Path
) -> None:
    """kill -9 of the supervisor alone (not its process group): its SCP processes go too, the
    port is free, and a restarted node binds it."""
    node, port = first
    assert node.proc is not None
    scps = children(node.proc.pid)
    assert len(scps) >= 2  # the two SCP processes (and multiprocessing's helpers)
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(timeout=10)

    def gone() -> bool:
        return not [p for p in scps if Path(f"/proc/{p}").exists() and _alive(p)]

    wait_for(gone, 20, "the SCP processes exiting with their supervisor")
    again = NodeProcess(node.config, tmp_path / "again.log")
    again.start()
    try:
        wait_for(lambda: echo_ok(port, NODE_AE), 60, "the restarted node answering C-ECHO")
    finally:
        again.kill_if_running()


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_data_dir_that_cannot_be_made_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    config = tmp_path / "n.toml"
    config.write_text(
        f'rules = []\n[node]\nhost = "127.0.0.1"\nport = {free_port()}\ndata_dir = "a-file/node"\n'
        "[admin]\nenabled = false\n"
    )
    done = serve(config)
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"cannot make the storage under {tmp_path / 'a-file/node/storage'}" in done.stderr
    assert "set [node] data_dir or DICOM_NODE_HOME" in done.stderr
    assert "Traceback" not in done.stderr
