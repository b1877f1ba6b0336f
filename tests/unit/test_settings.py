from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pydantic
import pytest

from dicom_node.settings import (
    BUILTIN_MODELS,
    SettingsError,
    default_data_dir,
    load_settings,
    masked,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_defaults_are_embedded() -> None:
    s = load_settings()
    assert s.database.url.get_secret_value().startswith("sqlite:///")
    assert s.security.allowed_calling_aes == ()


def test_toml_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = write(
        tmp_path,
        """
[node]
ae_title = "NODE_A"
port = 4242
[storage]
root = "/srv/dicom"
[completion]
quiet_period_s = 30
[security]
allowed_calling_aes = ["CT1", "MR2"]
""",
    )
    monkeypatch.setenv("DICOM_NODE_NODE__PORT", "5000")
    s = load_settings(cfg)
    assert (s.node.ae_title, s.node.port) == ("NODE_A", 5000)  # env beats the file
    assert s.storage.root == Path("/srv/dicom")
    assert s.completion.quiet_period_s == 30
    assert s.security.allowed_calling_aes == ("CT1", "MR2")


def test_config_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DICOM_NODE_CONFIG", str(write(tmp_path, "[node]\nport = 1234\n")))
    assert load_settings().node.port == 1234


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[node]\nport = 70000\n", "node.port"),
        ('[node]\nae_title = "THIS_TITLE_IS_TOO_LONG"\n', "node.ae_title"),
        ("[completion]\nquiet_period_s = -1\n", "completion.quiet_period_s"),
        ('[security]\nallowed_hosts = ["not-an-ip"]\n', "security.allowed_hosts"),
        ("[node]\nprot = 1\n", "node.prot"),
        ('[storage]\nduplicate_policy = "sometimes"\n', "storage.duplicate_policy"),
    ],
)
def test_invalid_value_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    with pytest.raises(SettingsError, match=rf"invalid setting {key}\b"):
        load_settings(write(tmp_path, text))


def test_settings_are_frozen() -> None:
    s = load_settings()
    with pytest.raises(pydantic.ValidationError):
        s.node.port = 1  # type: ignore[misc]


def test_masked_hides_database_password() -> None:
    s = load_settings(database={"url": "postgresql+psycopg://node:s3cret@db/pacs"})
    shown = json.dumps(masked(s))
    assert "s3cret" not in shown and "***" in shown
    # a broker URL SQLAlchemy cannot parse is masked all the same
    s = load_settings(queue={"broker_url": "sentinel-redis://node:s3cret@broker:26379/0"})
    assert masked(s)["queue"]["broker_url"] == "sentinel-redis://node:***@broker:26379/0"


def test_cli_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    cfg = write(tmp_path, '[node]\nport = "eleven"\n')
    done = subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "invalid setting node.port" in done.stderr


def test_env_example_is_generated_from_settings() -> None:
    from dicom_node.settings import env_example  # noqa: PLC0415
    from tests.helpers import REPO  # noqa: PLC0415

    assert (REPO / "deploy/env.example").read_text() == env_example(), (
        "deploy/env.example is stale: dicom-node config env-example > deploy/env.example"
    )
    assert "DICOM_NODE_COMPLETION__QUIET_PERIOD_S=60.0" in env_example()


def test_everything_lives_under_one_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No default depends on the working directory: storage, index and the site's models are
    under the data dir, and the built-in models come after the site's."""
    monkeypatch.setenv("DICOM_NODE_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    for where in (tmp_path, Path("/")):
        monkeypatch.chdir(where)
        s = load_settings()
        assert s.node.data_dir == tmp_path / "home"
        assert s.storage.root == tmp_path / "home" / "storage"
        assert s.database.url.get_secret_value() == f"sqlite:///{tmp_path}/home/dicom-node.db"
        assert s.results_root == tmp_path / "home" / "storage" / "results"
        assert s.model_path == (tmp_path / "home" / "models", BUILTIN_MODELS)
    assert (BUILTIN_MODELS / "ct-tissue" / "manifest.toml").is_file()
    # an explicit data_dir moves every path not set on its own
    s = load_settings(node={"data_dir": "/srv/node"}, storage={"root": "/fast/storage"})
    assert s.storage.root == Path("/fast/storage")
    assert s.database.url.get_secret_value() == "sqlite:////srv/node/dicom-node.db"
    assert s.models.root == Path("/srv/node/models")


@pytest.mark.parametrize(
    ("env", "root", "expected"),
    [
        ({"STATE_DIRECTORY": "/var/lib/dicom-node:/other"}, False, "/var/lib/dicom-node"),
        ({}, True, "/var/lib/dicom-node"),
        ({"XDG_DATA_HOME": "/home/ann/.data"}, False, "/home/ann/.data/dicom-node"),
        ({"HOME": "/home/ann"}, False, "/home/ann/.local/share/dicom-node"),
    ],
    ids=["systemd-service", "root", "xdg", "user"],
)
def test_the_default_data_dir_is_the_service_s_or_the_user_s(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], root: bool, expected: str
) -> None:
    for name in ("DICOM_NODE_HOME", "STATE_DIRECTORY", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr("os.geteuid", lambda: 0 if root else 1000)
    assert default_data_dir() == Path(expected)
    assert load_settings().storage.root == Path(expected) / "storage"


def test_relative_paths_in_a_config_file_resolve_against_its_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    cfg = write(
        etc,
        """
[node]
data_dir = "data"
[storage]
root = "../fast/storage"
[security]
tls_cert = "tls/node.pem"
[[destinations]]
name = "pacs"
ae_title = "PACS"
host = "pacs.local"
port = 104
tls_ca = "tls/ca.pem"
""",
    )
    monkeypatch.chdir("/")
    s = load_settings(cfg)
    assert s.node.data_dir == etc / "data"
    assert s.storage.root == etc / "../fast/storage"
    assert s.database.url.get_secret_value() == f"sqlite:///{etc}/data/dicom-node.db"
    assert s.models.root == etc / "data" / "models"
    assert s.security.tls_cert == etc / "tls" / "node.pem"
    assert s.destinations[0].tls_ca == etc / "tls" / "ca.pem"
    cfg.write_text('[database]\nurl = "sqlite:///index/node.db"\n')
    assert load_settings(cfg).database.url.get_secret_value() == f"sqlite:///{etc}/index/node.db"
    cfg.write_text('[database]\nurl = "postgresql+psycopg://node@db/node"\n')
    assert load_settings(cfg).database.url.get_secret_value() == "postgresql+psycopg://node@db/node"
