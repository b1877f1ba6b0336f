"""Train the ct-tissue reference model: a MONAI DynUNet that reproduces (and smooths) the
classical labeler in ``workers/labelers/ct_tissue.py`` on real CT from the test data.

The network learns the labeler's tissue step (Hounsfield ranges and clean-up, ``tissue()``) on
whole frames; the body region is the labeler's classical body mask, which the node applies to
the network's output (``[postprocessing] mask`` in the manifest) and so does the scoring here.

    python dicom_node/models/ct-tissue/train.py          # full run, writes this folder's bundle
    python dicom_node/models/ct-tissue/train.py --smoke --out /tmp/x  # a few steps, to prove it

Reproducible: fixed seeds, deterministic torch algorithms, single-process data; the config,
the input files' sha256 and the held-out metrics go to ``metrics.json`` next to the weights.
The held-out series is scored the way the node runs the model: its own grid planning,
sliding-window inference and mapping back onto every source frame, against the labeler there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - torch's own convention
from monai.losses import DiceCELoss
from monai.networks.nets import DynUNet
from monai.transforms import Compose, RandFlipd, RandGaussianNoised, RandRotated

from workers.inference.grid import plan_grid, source_spacing, to_model_grid, to_source
from workers.inference.volume import Volume, load_series
from workers.labelers import ct_tissue

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]

# Real CT in the test data (../shared/testdata, or DICOM_NODE_TESTDATA); see its inventory.csv.
TRAIN = (
    "dcm_qa_ct/In/Philips/S21610/S2010",  # head phantom, 54 slices, 18.5 deg gantry tilt
    "dcm_qa_ct/In/Philips/S21570/S2010",  # the same phantom, another study, 28 slices at 5 mm
    "wg04/data/WG04/REF/CT1_UNC",  # patient chest, 1 slice
)
HELD_OUT = "dcmqi/data/segmentations/ct-3slice"  # patient abdomen, 3 slices: never trained on

# The network and its grid: these mirror configs/inference.json and manifest.toml.
SPACING = (2.5, 0.75, 0.75)  # model grid (slice, row, column) mm
WINDOW = (-1024.0, 1024.0)  # clip, then scale to 0..1
# In-plane the grid halves four times; along the slices never (series of 1-3 slices work).
KERNELS = [(1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 3), (3, 3, 3)]
STRIDES = [(1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2), (1, 2, 2)]
FILTERS = [8, 16, 32, 64, 96]
ROI = (16, 352, 352)  # inference window: a whole head or chest slab at 0.75 mm
CLASSES = 5  # background + adipose, soft tissue, bone, air


def network() -> DynUNet:
    return DynUNet(
        spatial_dims=3,
        in_channels=1,
        out_channels=CLASSES,
        kernel_size=KERNELS,
        strides=STRIDES,
        upsample_kernel_size=STRIDES[1:],
        filters=FILTERS,
        norm_name="batch",
        res_block=False,
    )


def network_def() -> dict[str, Any]:
    """The same network for configs/inference.json (MONAI's ConfigParser instantiates it)."""
    return {
        "_target_": "monai.networks.nets.DynUNet",
        "spatial_dims": 3,
        "in_channels": 1,
        "out_channels": CLASSES,
        "kernel_size": [list(k) for k in KERNELS],
        "strides": [list(s) for s in STRIDES],
        "upsample_kernel_size": [list(s) for s in STRIDES[1:]],
        "filters": FILTERS,
        "norm_name": "batch",
        "res_block": False,
    }


def write_bundle(out: Path, weights_sha256: str, held_out: dict[str, Any] | None) -> None:
    """configs/metadata.json and configs/inference.json (MONAI bundle), and the weights'
    sha256 in manifest.toml when the folder has one."""
    import monai  # noqa: PLC0415

    (out / "configs").mkdir(parents=True, exist_ok=True)
    channels = {"0": "background", **{str(k): v for k, v in ct_tissue.NAMES.items()}}
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "1.0.0",
        "changelog": {"1.0.0": "first release, trained by models/ct-tissue/train.py"},
        "monai_version": monai.__version__,
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {},
        "name": "ct-tissue",
        "task": "CT tissue composition (adipose, soft tissue, bone, air inside the body)",
        "description": "A small DynUNet that reproduces a classical Hounsfield-range labeler; "
        "a reference for packaging models for dicom-node. Not for clinical use.",
        "authors": "dicom-node contributors",
        "copyright": "Apache-2.0",
        "data_source": "public DICOM test data (dcm_qa_ct, dcmqi, WG04); see README.md",
        "data_type": "dicom",
        "image_classes": "single channel CT, Hounsfield units windowed [-1024, 1024] -> [0, 1]",
        "label_classes": channels,
        "pred_classes": channels,
        "eval_metrics": {"held_out_dice": {k: v["dice"] for k, v in (held_out or {}).items()}},
        "intended_use": "Demonstration and integration testing only; not for diagnostic use",
        "references": [],
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "hounsfield",
                    "modality": "CT",
                    "num_channels": 1,
                    "spatial_shape": [16, 352, 352],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": {"0": "image"},
                }
            },
            "outputs": {
                "pred": {
                    "type": "image",
                    "format": "segmentation",
                    "num_channels": CLASSES,
                    "spatial_shape": [16, 352, 352],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "is_patch_data": True,
                    "channel_def": channels,
                }
            },
        },
    }
    (out / "configs" / "metadata.json").write_text(json.dumps(metadata, indent=1) + "\n")
    inference = {
        "bundle_root": ".",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": network_def(),
        "network": "$@network_def.to(@device)",
        "inferer": {
            "_target_": "SlidingWindowInferer",
            "roi_size": list(ROI),
            "sw_batch_size": 1,
            "overlap": 0.25,
            "mode": "gaussian",
        },
        "spacing_mm": list(SPACING),
        "window_hu": list(WINDOW),
    }
    (out / "configs" / "inference.json").write_text(json.dumps(inference, indent=1) + "\n")
    manifest = out / "manifest.toml"
    if manifest.is_file():
        text = manifest.read_text()
        start = text.index('sha256 = "') + len('sha256 = "')
        manifest.write_text(text[:start] + weights_sha256 + text[start + 64 :])


def testdata_root(given: str | None) -> Path:
    """--testdata; else DICOM_NODE_TESTDATA; else ../shared/testdata or the fetch command's."""
    fetched = Path.home() / ".cache" / "dicom-node" / "testdata"
    found = next((p for p in (REPO.parent / "shared/testdata", fetched) if p.is_dir()), fetched)
    root = Path(given or os.environ.get("DICOM_NODE_TESTDATA") or found)
    if not root.is_dir():
        sys.exit(f"test data not found at {root}: set DICOM_NODE_TESTDATA or fetch it (README)")
    return root


def series_paths(root: Path, rel: str) -> list[Path]:
    path = root / rel
    if path.is_file():
        return [path]
    return sorted(p for p in path.iterdir() if p.is_file() and p.name != "DIRFILE")


def files_digest(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        digest.update(hashlib.sha256(p.read_bytes()).digest())
    return digest.hexdigest()


def normalise(hu: torch.Tensor) -> torch.Tensor:
    low, high = WINDOW
    return (hu.clamp(low, high) - low) / (high - low)


def on_grid(
    volume: Volume, labels: np.ndarray, spacing: tuple[float, float, float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Image (HU) and labels resampled to ``spacing``: image linear, labels nearest."""
    grid = plan_grid(volume, spacing)
    image = to_model_grid(volume, grid, torch.device("cpu"))[0, 0]
    lab = torch.from_numpy(labels).float()[None, None]
    _, h, w = grid.shape
    lab = F.interpolate(lab, size=(lab.shape[2], h, w), mode="nearest")[0, 0]
    rows = np.clip(np.rint(grid.source_index).astype(np.int64), 0, labels.shape[0] - 1)
    return image, lab[torch.from_numpy(rows)].to(torch.uint8)


def crop(
    image: torch.Tensor, labels: torch.Tensor, size: tuple[int, int, int], rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """A random crop of ``size``, padded with air (and background) where the volume is smaller;
    crops are centred on tissue (not air) more often than not."""
    pads = []
    for dim, want in zip(reversed(image.shape), reversed(size), strict=True):
        extra = max(0, want - dim)
        pads += [extra // 2, extra - extra // 2]
    image = F.pad(image, pads, value=WINDOW[0])
    labels = F.pad(labels, pads, value=0)
    starts = []
    tissue = (labels != 0) & (labels != ct_tissue.AIR)
    body = torch.nonzero(tissue) if rng.random() < 0.8 else None
    for axis, want in enumerate(size):
        limit = image.shape[axis] - want
        if body is not None and len(body):
            centre = int(body[rng.integers(len(body)), axis])
            start = int(
                np.clip(centre - want // 2 + rng.integers(-want // 4, want // 4 + 1), 0, limit)
            )
        else:
            start = int(rng.integers(0, limit + 1))
        starts.append(start)
    sl = tuple(slice(s, s + w) for s, w in zip(starts, size, strict=True))
    return image[sl], labels[sl]


def augmentations(seed: int) -> Compose:
    aug = Compose(
        [
            RandFlipd(("image", "label"), prob=0.5, spatial_axis=2),
            RandFlipd(("image", "label"), prob=0.5, spatial_axis=1),
            RandRotated(
                ("image", "label"),
                range_x=np.deg2rad(10),  # about the slice axis: in-plane rotation
                prob=0.5,
                mode=("bilinear", "nearest"),
                padding_mode="border",
                keep_size=True,
            ),
            RandGaussianNoised("image", prob=0.5, std=15.0),  # HU: keeps the ranges meaningful
        ]
    )
    aug.set_random_state(seed)
    return aug


def shift(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """A smooth random HU offset: global up to +-80 HU plus an in-plane ramp up to +-60 HU."""
    _, h, w = shape
    rows = np.linspace(-1, 1, h)[:, None] * rng.uniform(-60, 60)
    cols = np.linspace(-1, 1, w)[None, :] * rng.uniform(-60, 60)
    return (rng.uniform(-80, 80) + rows + cols).astype(np.float32)[None]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else 1.0


def predict(net: torch.nn.Module, volume: Volume) -> np.ndarray:
    """Labels on every source frame, as the node computes them (grid, window, map back)."""
    from monai.inferers import sliding_window_inference  # noqa: PLC0415

    grid = plan_grid(volume, SPACING)
    x = normalise(to_model_grid(volume, grid, torch.device("cpu")))
    net.eval()
    with torch.inference_mode():
        logits = sliding_window_inference(x, ROI, 1, net, overlap=0.25, mode="gaussian")
        labels = to_source(torch.softmax(logits, 1), grid).labels
    return ct_tissue.inside_body(labels, volume.array)  # [postprocessing] mask, as the node


def score(net: torch.nn.Module, volume: Volume, truth: np.ndarray) -> dict[str, Any]:
    t0 = time.perf_counter()
    pred = predict(net, volume)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"inference_s": round(seconds, 2), "labels": {}}
    for value, name in ct_tissue.NAMES.items():
        out["labels"][name] = {
            "dice": round(dice(pred == value, truth == value), 4),
            "reference_voxels": int((truth == value).sum()),
            "predicted_voxels": int((pred == value).sum()),
        }
    return out


SCALES = (0.8, 1.0, 1.25)  # training grids: the model spacing times each


def prepare(root: Path) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], dict[str, Any]]:
    """Teacher labels on the source frames, then the training grids at several spacings."""
    samples: list[tuple[torch.Tensor, torch.Tensor]] = []
    inputs: dict[str, Any] = {}
    for rel in TRAIN:
        paths = series_paths(root, rel)
        volume = load_series(paths)
        labels = ct_tissue.tissue(volume.array)
        inputs[rel] = {"files": len(paths), "sha256": files_digest(paths), "role": "train"}
        for scale in SCALES:
            spacing = (SPACING[0] * scale, SPACING[1] * scale, SPACING[2] * scale)
            samples.append(on_grid(volume, labels, spacing))
    return samples, inputs


def train(
    args: argparse.Namespace,
    samples: list[tuple[torch.Tensor, torch.Tensor]],
    rng: np.random.Generator,
    device: torch.device,
    since: float,
) -> tuple[torch.nn.Module, list[float]]:
    net = network().to(device)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, total_steps=args.steps
    )
    aug = augmentations(args.seed)
    losses: list[float] = []
    net.train()
    for step in range(args.steps):
        batch_x, batch_y = [], []
        for _ in range(args.batch):
            image, lab = samples[rng.integers(len(samples))]  # each series and scale alike
            x, y = crop(image, lab, tuple(args.patch), rng)
            item = aug({"image": x[None].numpy(), "label": y[None].numpy()})
            hu = np.asarray(item["image"])[0] + shift(rng, x.shape)
            # the target is the labeler's on the image the network sees: after an HU shift the
            # context no longer tells fat from muscle, only the Hounsfield ranges do
            batch_x.append(normalise(torch.as_tensor(hu[None], dtype=torch.float32)))
            batch_y.append(torch.as_tensor(ct_tissue.tissue(hu)[None]).long())
        x = torch.stack(batch_x).float().to(device)
        y = torch.stack(batch_y).to(device)
        loss = loss_fn(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
        if step % 50 == 0 or step == args.steps - 1:
            print(
                f"step {step:4d}/{args.steps} loss {np.mean(losses[-50:]):.4f} "
                f"{time.perf_counter() - since:.0f}s",
                flush=True,
            )
    return net, losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--testdata",
        help="default: $DICOM_NODE_TESTDATA, ../shared/testdata or ~/.cache/dicom-node/testdata",
    )
    parser.add_argument("--out", type=Path, default=HERE, help="bundle folder to write")
    parser.add_argument("--steps", type=int, default=1400)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--patch", type=int, nargs=3, default=(4, 160, 160))
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=20261124)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--smoke", action="store_true", help="3 steps on small patches")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch, args.patch = 3, 1, (4, 64, 64)

    started = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)  # MONAI's transforms draw from the global state too
    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = testdata_root(args.testdata)

    samples, inputs = prepare(root)
    held_paths = series_paths(root, HELD_OUT)
    held = load_series(held_paths)
    held_truth = ct_tissue.label(held.array, source_spacing(held))
    inputs[HELD_OUT] = {
        "files": len(held_paths),
        "sha256": files_digest(held_paths),
        "role": "held-out",
    }
    prepared = time.perf_counter()
    net, losses = train(args, samples, rng, device, prepared)
    trained = time.perf_counter()

    net = net.cpu()
    held_score = score(net, held, held_truth)
    seen = {}  # for transparency: the same measure on the series it trained on
    for rel in () if args.smoke else TRAIN:
        volume = load_series(series_paths(root, rel))
        seen[rel] = score(net, volume, ct_tissue.label(volume.array, source_spacing(volume)))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "models").mkdir(exist_ok=True)
    weights_path = args.out / "models" / "model.pt"
    torch.save(net.state_dict(), weights_path)
    finished = time.perf_counter()
    metrics: dict[str, Any] = {
        "held_out": {"series": HELD_OUT, **held_score},
        "training_series": seen,
        "config": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(args).items()
            if k not in {"out", "testdata"}
        }
        | {
            "spacing_mm": SPACING,
            "window_hu": WINDOW,
            "roi": ROI,
            "scales": SCALES,
            "network": network_def(),
        },
        "inputs": inputs,
        "loss": {"first_50": float(np.mean(losses[:50])), "last_50": float(np.mean(losses[-50:]))},
        "seconds": {
            "prepare": round(prepared - started, 1),
            "train": round(trained - prepared, 1),
            "total": round(finished - started, 1),
        },
        "environment": {
            "device": str(device),
            "threads": args.threads,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
        },
        "weights_sha256": hashlib.sha256(weights_path.read_bytes()).hexdigest(),
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    write_bundle(args.out, metrics["weights_sha256"], held_score["labels"])
    print(json.dumps(metrics["held_out"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
