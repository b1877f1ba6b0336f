"""Load a model plug-in as a torch module: TorchScript, state_dict + architecture, MONAI bundle.

Weights are checked against the manifest's sha256 before torch sees a byte, so a corrupted or
swapped file is a clear ModelError at load, never a wrong result. Loaded models stay warm in
the worker process (``ModelCache``), keyed by folder and digest.
"""

from __future__ import annotations

import importlib
import json
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.bundle import ConfigParser

from workers.inference.manifest import (
    Manifest,
    ModelError,
    ModelPath,
    load_manifest,
    sha256_of,
)


def pick_device(wanted: str) -> torch.device:
    """``auto``: CUDA when this process can see a GPU, else CPU."""
    if wanted == "cuda" and not torch.cuda.is_available():
        raise ModelError("the model needs CUDA and no GPU is visible to this worker")
    if wanted == "cuda" or (wanted == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")


@dataclass(frozen=True)
class LoadedModel:
    manifest: Manifest
    module: torch.nn.Module
    device: torch.device
    sha256: str


def _checked_weights(manifest: Manifest, folder: Path) -> Path:
    path = (folder / manifest.runner.weights).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise ModelError(f"model {manifest.name!r}: weights path leaves the model folder")
    if not path.is_file():
        raise ModelError(f"model {manifest.name!r}: weights file missing: {path}")
    actual = sha256_of(path)
    if actual != manifest.runner.sha256:
        raise ModelError(
            f"model {manifest.name!r}: weights {path.name} fail the sha256 check "
            f"(manifest {manifest.runner.sha256[:12]}…, file {actual[:12]}…): corrupted or replaced"
        )
    return path


def import_object(spec: str, what: str = "architecture") -> Any:
    """``module:name`` from a manifest; a ModelError naming it when it cannot be imported."""
    module_name, _, attr = spec.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {what} {spec!r}: {exc}") from None


def _state_dict_module(path: Path, architecture: Any, args: dict[str, Any]) -> torch.nn.Module:
    module = architecture(**args)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ModelError(f"weights {path.name} do not fit the architecture: {exc}") from None
    return module  # type: ignore[no-any-return]


def _jit(path: Path) -> torch.nn.Module:
    try:
        with warnings.catch_warnings():  # deprecated in torch 2.13, still what bundles ship
            warnings.simplefilter("ignore", DeprecationWarning)
            return torch.jit.load(str(path), map_location="cpu")  # type: ignore[no-untyped-call,no-any-return]
    except RuntimeError as exc:
        raise ModelError(f"{path.name} is not a TorchScript archive: {exc}") from None


def _bundle_module(manifest: Manifest, folder: Path, weights: Path) -> torch.nn.Module:
    """A MONAI bundle: configs/metadata.json, configs/inference.json, models/model.{ts,pt}."""
    metadata_path = folder / "configs" / "metadata.json"
    if not metadata_path.is_file():
        raise ModelError(f"model {manifest.name!r}: MONAI bundle without configs/metadata.json")
    metadata = json.loads(metadata_path.read_text())
    outputs: dict[str, dict[str, Any]] = metadata.get("network_data_format", {}).get("outputs", {})
    channels = next(iter(outputs.values()), {}).get("num_channels")
    if channels is not None and int(channels) != manifest.classes:
        raise ModelError(
            f"model {manifest.name!r}: bundle says {channels} output channels, "
            f"the manifest's labels need {manifest.classes}"
        )
    if weights.suffix == ".ts":
        return _jit(weights)
    parser = ConfigParser()
    parser.read_config(str(folder / "configs" / "inference.json"))
    parser["bundle_root"] = str(folder)
    try:
        network = parser.get_parsed_content("network_def")
    except Exception as exc:  # noqa: BLE001 - MONAI raises whatever the config's target raises
        raise ModelError(f"model {manifest.name!r}: inference.json network_def: {exc}") from None
    return _state_dict_module(weights, lambda: network, {})


def load_model(manifest: Manifest, folder: Path, device: torch.device) -> LoadedModel:
    """The model in its runner form on ``device``, its weights checked against the manifest."""
    weights = _checked_weights(manifest, folder)
    runner = manifest.runner
    if runner.kind == "torchscript":
        module = _jit(weights)
    elif runner.kind == "state_dict":
        assert runner.architecture is not None  # noqa: S101 - the manifest validator ensures it
        module = _state_dict_module(
            weights, import_object(runner.architecture), dict(runner.architecture_args)
        )
    else:
        module = _bundle_module(manifest, folder, weights)
    module.eval()
    return LoadedModel(manifest, module.to(device), device, manifest.runner.sha256)


class ModelCache:
    """Warm models for this worker process; reloaded when the manifest's digest changes."""

    def __init__(self, where: ModelPath, device: str) -> None:
        self.where = where  # one root, or the search path (Settings.model_path)
        self.device = device
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> LoadedModel:
        """The named model, loaded once and again only when its manifest changes."""
        manifest, folder = load_manifest(self.where, name)
        with self._lock:
            cached = self._models.get(name)
            if cached is not None and cached.manifest == manifest:
                return cached
            wanted = (
                self.device if manifest.resources.device == "auto" else manifest.resources.device
            )
            loaded = load_model(manifest, folder, pick_device(wanted))
            self._models[name] = loaded
            return loaded
