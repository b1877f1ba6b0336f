"""Model manifests and queue settings: what a model author or admin gets wrong is named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dicom_node.settings import BUILTIN_MODELS, SettingsError, load_settings
from tests.models import build_model
from workers.inference.manifest import ModelError, load_manifest


def test_visibility_timeout_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(SettingsError, match="visibility_timeout_s must be above"):
        load_settings(jobs={"hard_time_limit_s": 8000}, queue={"visibility_timeout_s": 7200})
    with pytest.raises(SettingsError, match="hard_time_limit_s must be above soft"):
        load_settings(jobs={"soft_time_limit_s": 100, "hard_time_limit_s": 50})


def test_broker_password_is_masked() -> None:
    from dicom_node.settings import masked  # noqa: PLC0415

    settings = load_settings(queue={"broker_url": "redis://:s3cret@redis:6379/0"})
    assert "s3cret" not in json.dumps(masked(settings))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('name = "m"', 'name = "other"'), "manifest names itself 'other'"),
        (lambda t: t.replace('intensity = "window"', 'intensity = "lut"'), "intensity"),
        (lambda t: t.replace("value = 1\n", "value = 0\n"), "labels.0.value"),
        (
            lambda t: (
                t + "[[labels]]\nvalue = 1\nname = 'x'\n"
                "category = { value = '1', scheme = 'SCT', meaning = 'x' }\n"
                "type = { value = '1', scheme = 'SCT', meaning = 'x' }\n"
            ),
            "label values must be distinct",
        ),
        (lambda t: t.replace('kind = "torchscript"', 'kind = "state_dict"'), "needs architecture"),
        (lambda t: t + "oops = ", "invalid"),
        (lambda t: 'teacher = "labeler.py"\n' + t, "teacher"),
        (lambda t: t + '[postprocessing]\nmask = "os.system(1)"\n', "postprocessing.mask"),
    ],
)
def test_invalid_manifests_are_refused_with_the_reason(
    tmp_path: Path, edit: object, message: str
) -> None:
    folder = build_model(tmp_path, "m", "torchscript")
    manifest = folder / "manifest.toml"
    manifest.write_text(edit(manifest.read_text()))  # type: ignore[operator]
    with pytest.raises(ModelError, match=message):
        load_manifest(tmp_path, "m")


def test_models_list_checks_every_weights_file(tmp_path: Path) -> None:
    for kind in ("torchscript", "state_dict", "monai_bundle"):
        build_model(tmp_path / "models", kind.replace("_", "-"), kind)
    (tmp_path / "node.toml").write_text(f'[models]\nroot = "{tmp_path / "models"}"\n')

    def listing() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "dicom_node",
                "models",
                "list",
                "--json",
                "--config",
                str(tmp_path / "node.toml"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = listing()
    assert done.returncode == 0, done.stderr
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert {n: r["status"] for n, r in rows.items()} == dict.fromkeys(
        ("ct-tissue", "monai-bundle", "state-dict", "torchscript"), "ok"
    )
    assert rows["monai-bundle"]["runner"] == "monai_bundle"
    # the site's root first, then the models inside the package, whatever the working directory
    assert rows["torchscript"]["folder"] == str(tmp_path / "models" / "torchscript")
    assert rows["ct-tissue"]["folder"] == str(BUILTIN_MODELS / "ct-tissue")
    with (tmp_path / "models" / "state-dict" / "model.pt").open("ab") as f:
        f.write(b"\0")
    done = listing()
    assert done.returncode == 1
    rows = {r["name"]: r for r in json.loads(done.stdout)}
    assert rows["state-dict"]["status"] == "weights fail the sha256 check (model.pt)"
