"""Inference benchmark: the whole pipeline against the bare model forward, same device, one run.

    python bench/inference.py [--slices 300] [--repeats 2] [--device auto|cpu|cuda]

A 300-slice 512x512 CT series is built from the real Philips slices in the test data (pixel
data and tags kept, new UIDs and positions 1 mm apart) and written as DICOM files. A small 3D CNN
(three convolutions, fixed seed, TorchScript) runs through ``workers.inference.pipeline``:
read and decode the files, sort and build the volume, resample to the model grid and normalise,
sliding-window forward, map the labels back onto every source frame. The bare reference is the
same sliding-window forward on a tensor already on the device. Prints seconds per stage,
slices/s, and two throughput ratios against bare (best of ``--repeats``): load + preprocess +
forward (the issue's target >= 0.85), and the whole job including mapping the labels back onto
every source frame and saving the mask with fsync.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference
from pydicom import dcmread
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import testdata_root  # noqa: E402
from workers.inference.grid import plan_grid, to_model_grid  # noqa: E402
from workers.inference.pipeline import (  # noqa: E402
    JobInput,
    SeriesInput,
    normalise,
    run_series,
)
from workers.inference.runners import ModelCache  # noqa: E402
from workers.inference.volume import load_series  # noqa: E402

STRAIGHT = "dcm_qa_ct/In/Philips/S21570/S2010"
ROI = (64, 160, 160)
SPACING = (2.0, 1.0, 1.0)


class SmallCNN(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Conv3d(1, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(16, 16, 3, padding=1),
            torch.nn.ReLU(),
            torch.nn.Conv3d(16, 5, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # type: ignore[no-any-return]


def build_series(out: Path, slices: int) -> list[Path]:
    root = testdata_root()
    if root is None:
        sys.exit("test data not found: set DICOM_NODE_TESTDATA (see README)")
    sources = sorted(p for p in (root / STRAIGHT).iterdir() if p.name != "DIRFILE")
    templates = [dcmread(p) for p in sources]
    study, series = generate_uid(), generate_uid()
    z0 = float(templates[0].ImagePositionPatient[2])
    paths = []
    for i in range(slices):
        ds = copy.deepcopy(templates[i % len(templates)])
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        x, y = (float(v) for v in ds.ImagePositionPatient[:2])
        ds.ImagePositionPatient = [x, y, z0 + i * 1.0]
        ds.InstanceNumber = i + 1
        path = out / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_model(folder: Path) -> None:
    torch.manual_seed(0)
    folder.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(SmallCNN().eval()), str(folder / "model.ts"))
    digest = hashlib.sha256((folder / "model.ts").read_bytes()).hexdigest()
    labels = "\n".join(
        f'[[labels]]\nvalue = {v}\nname = "class{v}"\n'
        f'category = {{ value = "85756007", scheme = "SCT", meaning = "Tissue" }}\n'
        f'type = {{ value = "85756007", scheme = "SCT", meaning = "Tissue" }}'
        for v in range(1, 5)
    )
    (folder / "manifest.toml").write_text(
        'name = "bench-cnn"\nversion = "0"\n'
        f'[runner]\nkind = "torchscript"\nweights = "model.ts"\nsha256 = "{digest}"\n'
        f'[preprocessing]\ntarget_spacing_mm = {list(SPACING)}\nintensity = "window"\n'
        "window = [-1000, 1000]\n"
        f"[inference]\nroi_size = {list(ROI)}\nsw_batch_size = 2\noverlap = 0.25\namp = true\n"
        f"{labels}\n"
    )


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "series").mkdir()
        paths = build_series(work / "series", args.slices)
        write_model(work / "models" / "bench-cnn")
        model = ModelCache(work / "models", args.device).get("bench-cnn")
        device = model.device
        volume = load_series(paths)
        grid = plan_grid(volume, SPACING)
        x = normalise(to_model_grid(volume, grid, device), model.manifest)
        print(
            f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})"
            f", torch {torch.__version__}, {torch.get_num_threads()} threads"
        )
        print(f"series {volume.array.shape} -> model grid {tuple(x.shape[2:])}, roi {ROI}")
        amp = device.type == "cuda"

        def bare() -> float:
            sync(device)
            t = time.perf_counter()
            with torch.inference_mode(), torch.autocast("cuda", enabled=amp):
                sliding_window_inference(x, ROI, 2, model.module, overlap=0.25, mode="gaussian")
            sync(device)
            return time.perf_counter() - t

        bare()  # warm-up (cuDNN autotune, allocator)
        bare_s = min(bare() for _ in range(args.repeats))
        runs = []
        for i in range(args.repeats):
            out = work / f"out{i}"
            out.mkdir()
            t = time.perf_counter()
            series = SeriesInput("bench", tuple(paths))
            summary = run_series(model, series, out, JobInput("bench", 1, "bench", (series,)))
            runs.append((time.perf_counter() - t, summary["timings_s"]))
        pipeline_s, stages = min(runs, key=lambda r: r[0])
    n = args.slices
    print(f"{'stage':<28}{'s':>8}")
    for stage, seconds in stages.items():
        print(f"  {stage:<26}{seconds:>8.2f}")
    print(f"{'pipeline (incl. mask save)':<28}{pipeline_s:>8.2f}   {n / pipeline_s:7.1f} slices/s")
    print(f"{'bare forward':<28}{bare_s:>8.2f}   {n / bare_s:7.1f} slices/s")
    core = stages["load"] + stages["preprocess"] + stages["forward"]
    print(f"load + preprocess + forward / bare throughput: {bare_s / core:.2f} (target >= 0.85)")
    print(f"whole job (+ labels onto source frames, mask saved) / bare: {bare_s / pipeline_s:.2f}")


if __name__ == "__main__":
    main()
