"""Loading a model plug-in (``workers.inference.runners``) and the pipeline's arithmetic
(``workers.inference.pipeline``): every runner form loads and is cached until its manifest
changes; a weights file that is missing, replaced, outside the folder or of the wrong shape is
refused with its name; intensity normalisation and the label channels follow the manifest."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.models import build_model
from workers.inference.manifest import ModelError, sha256_of
from workers.inference.pipeline import label_channels, normalise
from workers.inference.runners import ModelCache, import_object, pick_device


@pytest.mark.parametrize("kind", ["torchscript", "state_dict", "monai_bundle"])
def test_each_runner_form_loads_the_same_network(tmp_path: Path, kind: str) -> None:
    build_model(tmp_path, "bone", kind)
    model = ModelCache(tmp_path, "cpu").get("bone")
    assert model.device == torch.device("cpu")
    x = torch.tensor([0.0, 0.6, 0.7, 1.0]).reshape(1, 1, 4, 1, 1)  # window units: 300.5 HU = 0.65
    logits = model.module(x)
    assert logits.argmax(dim=1).flatten().tolist() == [0, 0, 1, 1]
    assert model.sha256 == model.manifest.runner.sha256


def test_the_cache_reloads_only_when_the_manifest_changes(tmp_path: Path) -> None:
    folder = build_model(tmp_path, "bone", "torchscript")
    cache = ModelCache(tmp_path, "cpu")
    first = cache.get("bone")
    assert cache.get("bone") is first
    manifest = folder / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('version = "1.0.0"', 'version = "1.0.1"'))
    second = cache.get("bone")
    assert second is not first and second.manifest.version == "1.0.1"


def test_replaced_weights_fail_the_sha256_check(tmp_path: Path) -> None:
    folder = build_model(tmp_path, "bone", "state_dict")
    weights = folder / "model.pt"
    expected = sha256_of(weights)
    weights.write_bytes(weights.read_bytes() + b"\0")
    with pytest.raises(ModelError) as caught:
        ModelCache(tmp_path, "cpu").get("bone")
    message = str(caught.value)
    assert message.startswith("model 'bone': weights model.pt fail the sha256 check")
    assert f"manifest {expected[:12]}…" in message and "corrupted or replaced" in message


def set_runner(folder: Path, **values: str) -> None:
    """Rewrite the manifest's [runner] keys (sha256 kept unless given)."""
    text = (folder / "manifest.toml").read_text()
    for key, value in values.items():
        text = re.sub(rf'(?m)^{key} = ".*"$', f'{key} = "{value}"', text)
    (folder / "manifest.toml").write_text(text)


def test_weights_outside_the_folder_or_missing_are_refused(tmp_path: Path) -> None:
    folder = build_model(tmp_path, "bone", "torchscript")
    set_runner(folder, weights="../elsewhere.ts")
    with pytest.raises(ModelError, match="weights path leaves the model folder"):
        ModelCache(tmp_path, "cpu").get("bone")
    set_runner(folder, weights="gone.ts")
    with pytest.raises(ModelError, match=r"weights file missing: .*gone\.ts"):
        ModelCache(tmp_path, "cpu").get("bone")


def test_a_state_dict_that_does_not_fit_its_architecture_is_refused(tmp_path: Path) -> None:
    folder = build_model(tmp_path, "bone", "state_dict")
    wrong = torch.nn.Conv3d(1, 5, kernel_size=1)  # five channels where the manifest has two
    torch.save(wrong.state_dict(), folder / "model.pt")
    set_runner(folder, sha256=sha256_of(folder / "model.pt"))
    with pytest.raises(ModelError, match=r"weights model\.pt do not fit the architecture"):
        ModelCache(tmp_path, "cpu").get("bone")


def test_a_file_that_is_not_torchscript_is_refused(tmp_path: Path) -> None:
    folder = build_model(tmp_path, "bone", "torchscript")
    (folder / "model.ts").write_bytes(b"not an archive")
    set_runner(folder, sha256=sha256_of(folder / "model.ts"))
    with pytest.raises(ModelError, match=r"model\.ts is not a TorchScript archive"):
        ModelCache(tmp_path, "cpu").get("bone")


def test_imports_and_devices_fail_with_what_was_asked() -> None:
    assert import_object("torch.nn:Conv3d") is torch.nn.Conv3d
    with pytest.raises(ModelError, match=r"cannot import architecture 'no\.such\.module:Net'"):
        import_object("no.such.module:Net")
    with pytest.raises(ModelError, match=r"cannot import teacher 'torch\.nn:NoSuchNet'"):
        import_object("torch.nn:NoSuchNet", "teacher")
    assert pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert pick_device("auto") == torch.device("cpu")
        with pytest.raises(ModelError, match="needs CUDA and no GPU is visible"):
            pick_device("cuda")


def test_normalisation_and_label_channels_follow_the_manifest(tmp_path: Path) -> None:
    build_model(tmp_path, "bone", "torchscript")
    manifest = ModelCache(tmp_path, "cpu").get("bone").manifest
    x = torch.tensor([-2000.0, -1000.0, 0.0, 1000.0, 3000.0])
    assert normalise(x, manifest).tolist() == [0.0, 0.0, 0.5, 1.0, 1.0]  # window [-1000, 1000]
    zscore = manifest.model_copy(
        update={"preprocessing": manifest.preprocessing.model_copy(update={"intensity": "zscore"})}
    )
    z = normalise(torch.tensor([1.0, 3.0]), zscore)
    assert z.tolist() == pytest.approx([-0.7071, 0.7071], abs=1e-4)
    assert normalise(torch.tensor([5.0, 5.0]), zscore).tolist() == [0.0, 0.0]  # no spread
    assert label_channels(manifest) == {1: 1}
    sigmoid = manifest.model_copy(
        update={"inference": manifest.inference.model_copy(update={"output": "sigmoid"})}
    )
    assert label_channels(sigmoid) == {1: 0}
