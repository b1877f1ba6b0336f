"""Runtime of the shipped ct-tissue model on one real 54-slice CT, through the node's pipeline.

    python bench/ct_tissue.py [--repeats 3] [--device auto|cpu|cuda]

The series is the gantry-tilted Philips head CT (54 slices of 512x512) from the test data. Each
run is what a job does: read and decode the files, build the volume, resample to the model grid
(2.5 x 0.75 x 0.75 mm) and window, sliding-window forward of the MONAI DynUNet, map the labels
back onto every source frame. The reference in the same process is the bare sliding-window
forward on a tensor already on the device. Prints seconds per stage (best of ``--repeats``
after one warm-up run) and the ratio of the bare forward to the whole job.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference

from dicom_node.settings import BUILTIN_MODELS

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers import testdata_root  # noqa: E402
from workers.inference.grid import plan_grid, to_model_grid  # noqa: E402
from workers.inference.pipeline import normalise, predict  # noqa: E402
from workers.inference.runners import ModelCache  # noqa: E402

SERIES = "dcm_qa_ct/In/Philips/S21610/S2010"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    root = testdata_root()
    if root is None:
        sys.exit("test data not found: set DICOM_NODE_TESTDATA (see README)")
    paths = tuple(sorted(p for p in (root / SERIES).iterdir() if p.name != "DIRFILE"))
    model = ModelCache(BUILTIN_MODELS, args.device).get("ct-tissue")
    inf = model.manifest.inference
    assert inf.roi_size is not None

    runs = [predict(model, paths) for _ in range(args.repeats + 1)][1:]  # first: warm-up
    best = {k: min(r.timings_s[k] for r in runs) for k in runs[0].timings_s}
    whole = min(sum(r.timings_s.values()) for r in runs)

    grid = plan_grid(runs[0].volume, model.manifest.preprocessing.target_spacing_mm)
    x = normalise(to_model_grid(runs[0].volume, grid, model.device), model.manifest)
    bare = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        with torch.inference_mode():
            sliding_window_inference(
                x, inf.roi_size, inf.sw_batch_size, model.module, inf.overlap, mode="gaussian"
            )
        if model.device.type == "cuda":
            torch.cuda.synchronize()
        bare.append(time.perf_counter() - t0)

    name = torch.cuda.get_device_name() if model.device.type == "cuda" else "cpu"
    print(f"ct-tissue on {len(paths)} slices, device {model.device} ({name}), "
          f"threads {torch.get_num_threads()}, model grid {grid.shape}")  # fmt: skip
    for stage, seconds in best.items():
        print(f"  {stage:<12} {seconds:6.2f} s")
    print(f"  whole job    {whole:6.2f} s  ({len(paths) / whole:.1f} slices/s)")
    print(f"  bare forward {min(bare):6.2f} s  (reference: same window, tensor on the device)")
    print(f"  bare / whole {min(bare) / whole:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
