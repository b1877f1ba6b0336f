"""A model plug-in's manifest: ``<root>/<name>/manifest.toml`` on the search path (the site's
models.root, then the built-in models).

The manifest is the whole contract between a model author and the node: what the model wants
(selection defaults, preprocessing, inference window), what it says (labels with coded concepts
and colours, outputs), and how to load it (runner, weights, sha256, device and memory needs).
Axes are given in array order everywhere: (slice, row, column).
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dicom_node.errors import Permanent

MANIFEST = "manifest.toml"
CALLABLE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"  # module:function
Triple = tuple[float, float, float]


class ModelError(Permanent):
    """The model cannot be loaded or run as its manifest says; the message names the model."""


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Code(_Part):
    """A coded concept (SNOMED CT ``SCT`` or DICOM ``DCM``)."""

    value: str
    scheme: str
    meaning: str


class Label(_Part):
    value: int = Field(ge=1, le=255)
    name: str
    category: Code
    type: Code
    color: tuple[int, int, int] = (255, 0, 0)  # recommended display colour, sRGB
    site: Code | None = Field(
        default=None,
        description="finding site (CID 4031); none = the source's anatomic region or body part",
    )


class Selection(_Part):
    """Defaults a rule may start from (``dicom-node rules`` matches what the rule says)."""

    modality: tuple[str, ...] = ()
    orientation: tuple[str, ...] = ("AXIAL",)
    min_slices: int | None = None


class Preprocessing(_Part):
    target_spacing_mm: Triple | None = Field(
        default=None, description="model grid spacing (slice, row, column); none = source grid"
    )
    intensity: Literal["window", "zscore", "none"] = "none"
    window: tuple[float, float] | None = Field(default=None, description="clip, then scale to 0..1")

    @model_validator(mode="after")
    def _window_given(self) -> Preprocessing:
        if self.intensity == "window" and (self.window is None or self.window[0] >= self.window[1]):
            raise ValueError("intensity = 'window' needs window = [low, high] with low < high")
        return self


class Inference(_Part):
    roi_size: tuple[int, int, int] | None = Field(
        default=None, description="sliding window (slice, row, column); none = whole volume"
    )
    sw_batch_size: int = Field(default=1, ge=1)
    overlap: float = Field(default=0.25, ge=0, lt=1)
    amp: bool = Field(default=False, description="float16 autocast on CUDA")
    output: Literal["softmax", "sigmoid"] = "softmax"
    seg_type: Literal["binary", "fractional"] = Field(
        default="binary", description="FRACTIONAL keeps probabilities; most viewers show BINARY"
    )


class Postprocessing(_Part):
    mask: str | None = Field(
        default=None,
        pattern=CALLABLE,
        description="module:function, source intensities -> bool region; labels outside it are "
        "cleared (e.g. a classical body mask)",
    )


class Finding(_Part):
    """A qualitative evaluation in the SR (``[[findings]]``): ``name`` is Present in a segment
    whose volume and highest probability reach the thresholds, else Absent."""

    label: int = Field(ge=1, le=255)
    name: Code
    min_volume_ml: float = Field(default=0.0, ge=0)
    min_probability: float = Field(default=0.5, ge=0, le=1)


class Runner(_Part):
    kind: Literal["torchscript", "state_dict", "monai_bundle"]
    weights: str = Field(description="path relative to the model folder")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    architecture: str | None = Field(default=None, description="module:Class for state_dict")
    architecture_args: dict[str, object] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _architecture_for_state_dict(self) -> Runner:
        if self.kind == "state_dict" and not self.architecture:
            raise ValueError("a state_dict runner needs architecture = 'module:Class'")
        return self


class Resources(_Part):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_gpu_memory_mb: int = Field(default=0, ge=0)


class Manifest(_Part):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$")
    version: str
    description: str = ""
    family: Code | None = Field(default=None, description="algorithm family (SEG)")
    selection: Selection = Selection()
    preprocessing: Preprocessing = Preprocessing()
    inference: Inference = Inference()
    postprocessing: Postprocessing = Postprocessing()
    labels: tuple[Label, ...] = Field(min_length=1)
    outputs: tuple[Literal["seg", "measurements", "findings"], ...] = ("seg",)
    findings: tuple[Finding, ...] = ()
    runner: Runner
    resources: Resources = Resources()
    not_for_diagnostic_use: bool = True
    teacher: str | None = Field(
        default=None,
        pattern=CALLABLE,
        description="module:function, (intensities, spacing) -> labels: the classical labeler "
        "`dicom-node models evaluate` compares against when a site has no reference SEGs",
    )

    @model_validator(mode="after")
    def _labels_distinct(self) -> Manifest:
        values = [label.value for label in self.labels]
        if len(set(values)) != len(values):
            raise ValueError("label values must be distinct")
        if ("measurements" in self.outputs or "findings" in self.outputs) and (
            "seg" not in self.outputs
        ):
            raise ValueError("SR measurements reference SEG segments: outputs must include 'seg'")
        for finding in self.findings:
            if finding.label not in values:
                raise ValueError(f"finding {finding.name.meaning!r}: no label {finding.label}")
        return self

    @property
    def classes(self) -> int:
        """Output channels the network produces: background plus one per label (softmax)."""
        return max(label.value for label in self.labels) + 1


def sha256_of(path: Path) -> str:
    """The file's SHA-256, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


ModelPath = Path | Sequence[Path]


def search_path(where: ModelPath) -> tuple[Path, ...]:
    """One root, or the search path (``Settings.model_path``: the site's root, then the
    built-in models), as a tuple of roots."""
    return (where,) if isinstance(where, Path) else tuple(where)


def find_model(where: ModelPath, name: str) -> Path:
    """The folder of model ``name``: the first root of the search path that has it."""
    roots = search_path(where)
    for root in roots:
        if (root / name / MANIFEST).is_file():
            return root / name
    looked = " or ".join(str(root / name) for root in roots)
    raise ModelError(f"model {name!r}: no {MANIFEST} in {looked}")


def load_manifest(where: ModelPath, name: str) -> tuple[Manifest, Path]:
    """The manifest of model ``name`` (found on ``where``) and its folder; ModelError naming
    what is wrong."""
    folder = find_model(where, name)
    path = folder / MANIFEST
    try:
        manifest = Manifest.model_validate(tomllib.loads(path.read_text()))
    except (tomllib.TOMLDecodeError, ValidationError) as exc:
        raise ModelError(f"model {name!r}: invalid {path}: {exc}") from None
    if manifest.name != name:
        raise ModelError(f"model {name!r}: manifest names itself {manifest.name!r}")
    return manifest, folder
