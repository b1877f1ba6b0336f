"""Tiny real torch models with known weights, written as model plug-ins for the tests.

``threshold``: one 1x1x1 convolution on the windowed intensity, background logit 0 and label
logit ``GAIN * (x - t)``, where ``t`` is ``threshold_hu`` in window units. Softmax argmax is then
exactly "HU > threshold_hu", which the tests compute independently from the DICOM pixel data.
With several ascending thresholds, channel ``c`` has logit ``sum(GAIN * (x - t_j), j <= c)``,
so the argmax is the number of thresholds below the value: one band (segment) per threshold.
Each form the node supports is built: TorchScript, state_dict + architecture, MONAI bundle.
"""

from __future__ import annotations

import hashlib
import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydicom import Dataset, dcmread

from dicom_node.results import JobSummary
from dicom_node.settings import BUILTIN_MODELS
from workers.inference.pipeline import JobInput, SeriesInput, run
from workers.inference.runners import ModelCache

WINDOW = (-1000.0, 1000.0)
GAIN = 1000.0
BONE_LABEL = """[[labels]]
value = 1
name = "bone"
color = [241, 214, 145]
category = { value = "85756007", scheme = "SCT", meaning = "Tissue" }
type = { value = "272673000", scheme = "SCT", meaning = "Bone" }"""


EXTRA_LABELS = [
    ("soft tissue", "85756007", "Tissue", "87784001", "Soft tissue", (188, 90, 80)),
    ("fat", "85756007", "Tissue", "55603005", "Adipose tissue", (230, 220, 70)),
    ("air", "91720002", "Body substance", "417244007", "Air", (70, 130, 230)),
]


def threshold_conv(*thresholds_hu: float) -> torch.nn.Conv3d:
    conv = torch.nn.Conv3d(1, len(thresholds_hu) + 1, kernel_size=1)
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        total = 0.0
        for c, hu in enumerate(thresholds_hu, start=1):
            total += (hu - WINDOW[0]) / (WINDOW[1] - WINDOW[0])
            conv.weight[c, 0, 0, 0, 0] = GAIN * c
            conv.bias[c] = -GAIN * total
    return conv


def hounsfield(ds: Dataset) -> np.ndarray:
    """A single-frame slice's stored pixels through its rescale (HU for CT), from pydicom."""
    return ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def band_labels(hu: np.ndarray, thresholds_hu: tuple[float, ...]) -> np.ndarray:
    """The expected label per voxel, independently: how many thresholds lie below it."""
    return sum((hu > t).astype(np.uint8) for t in thresholds_hu)  # type: ignore[return-value]


def labels_toml(count: int) -> str:
    """``count`` labels: value 1 is bone when alone; with more, the bands from low to high."""
    if count == 1:
        return BONE_LABEL
    out = []
    for value, (name, cat, cat_m, typ, typ_m, color) in enumerate(EXTRA_LABELS[: count - 1], 1):
        out.append(
            f'[[labels]]\nvalue = {value}\nname = "{name}"\ncolor = {list(color)}\n'
            f'category = {{ value = "{cat}", scheme = "SCT", meaning = "{cat_m}" }}\n'
            f'type = {{ value = "{typ}", scheme = "SCT", meaning = "{typ_m}" }}'
        )
    out.append(BONE_LABEL.replace("value = 1", f"value = {count}", 1))
    return "\n".join(out)


def _toml_value(value: Any) -> str:
    return json.dumps(value)  # TOML accepts JSON's strings, numbers and arrays


def _write_manifest(
    folder: Path, name: str, runner: dict[str, Any], extra: str = "", labels: int = 1
) -> None:
    weights = folder / runner["weights"]
    runner = {**runner, "sha256": hashlib.sha256(weights.read_bytes()).hexdigest()}
    lines = [
        f'name = "{name}"',
        'version = "1.0.0"',
        'description = "test: HU threshold by one fixed convolution"',
        'outputs = ["seg", "measurements"]',
        "[runner]",
        *(f"{k} = {_toml_value(v)}" for k, v in runner.items() if k != "architecture_args"),
    ]
    if "architecture_args" in runner:
        args = ", ".join(f"{k} = {_toml_value(v)}" for k, v in runner["architecture_args"].items())
        lines.append(f"architecture_args = {{ {args} }}")
    lines += [
        "[preprocessing]",
        'intensity = "window"',
        f"window = {list(WINDOW)}",
        extra,
        labels_toml(labels),
    ]
    (folder / "manifest.toml").write_text("\n".join(lines) + "\n")


def build_model(
    root: Path,
    name: str,
    kind: str,
    *,
    threshold_hu: float | tuple[float, ...] = 300.5,
    extra: str = "",
) -> Path:
    """Write model plug-in ``root/name`` in form ``kind``; returns its folder. Several
    thresholds make several labels (see the module docstring)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    thresholds = threshold_hu if isinstance(threshold_hu, tuple) else (threshold_hu,)
    conv = threshold_conv(*thresholds)
    conv_args = {"in_channels": 1, "out_channels": len(thresholds) + 1, "kernel_size": 1}
    if kind == "torchscript":
        with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; bundles still use it
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.jit.save(torch.jit.script(conv), str(folder / "model.ts"))
        runner: dict[str, Any] = {"kind": "torchscript", "weights": "model.ts"}
    elif kind == "state_dict":
        torch.save(conv.state_dict(), folder / "model.pt")
        runner = {
            "kind": "state_dict",
            "weights": "model.pt",
            "architecture": "torch.nn:Conv3d",
            "architecture_args": conv_args,
        }
    elif kind == "monai_bundle":
        (folder / "configs").mkdir(exist_ok=True)
        (folder / "models").mkdir(exist_ok=True)
        torch.save(conv.state_dict(), folder / "models" / "model.pt")
        metadata = {
            "version": "1.0.0",
            "name": name,
            "network_data_format": {
                "inputs": {
                    "image": {"type": "image", "num_channels": 1, "spatial_shape": ["*"] * 3}
                },
                "outputs": {
                    "pred": {
                        "type": "image",
                        "num_channels": len(thresholds) + 1,
                        "spatial_shape": ["*"] * 3,
                    }
                },
            },
        }
        (folder / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1))
        inference = {"network_def": {"_target_": "torch.nn.Conv3d", **conv_args}}
        (folder / "configs" / "inference.json").write_text(json.dumps(inference, indent=1))
        runner = {"kind": "monai_bundle", "weights": "models/model.pt"}
    else:
        raise ValueError(kind)
    _write_manifest(folder, name, runner, extra, labels=len(thresholds))
    return folder


class OutOfMemoryAbove(torch.nn.Module):
    """The threshold convolution, except that a window larger than ``max_voxels`` raises
    ``torch.OutOfMemoryError`` as CUDA would: the seam for the OOM retry path on a CPU."""

    def __init__(self, max_voxels: int, threshold_hu: float = 300.5) -> None:
        super().__init__()
        self.max_voxels = max_voxels
        self.conv = threshold_conv(threshold_hu)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if x[0, 0].numel() * x.shape[0] > self.max_voxels:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.conv(x)  # type: ignore[no-any-return]


def expected_masks(files: list[Path]) -> dict[str, np.ndarray]:
    out = {}
    for path in files:
        ds = dcmread(path)
        hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        out[ds.SOPInstanceUID] = (hu > THRESHOLD_HU).astype(np.uint8)
    return out


def run_model(
    root: Path, name: str, files: list[Path], results: Path, job: str = "job-1", **rule: Any
) -> JobSummary:
    shuffled = files[:]
    random.Random(3).shuffle(shuffled)
    job_input = JobInput(job, 1, name, (SeriesInput("1.2.3", tuple(shuffled)),), **rule)
    return run(job_input, ModelCache(root, "cpu"), results)


THRESHOLD_HU = 300.5


MODELS = BUILTIN_MODELS


CT_BANDS = (-500.5, 300.5)  # air / soft tissue / bone
