"""Worker memory: peak RSS of one ct-tissue job on 512x512 CTs of 150, 300 and 600 slices.

    python bench/memory.py [--slices 150,300,600] [--device cpu|auto|cuda]

Each CT is built from the real Philips slices in the test data (pixel data and tags kept, new
UIDs, positions 1 mm apart) and written as DICOM files. Each job runs in a fresh process, as an
embedded worker runs it: the shipped ct-tissue model through ``workers.inference.pipeline.run``
(load and decode, model grid, sliding-window forward, labels back onto every source frame,
the body mask, measurements, the mask saved), then the SEG + SR of the default profile
(``workers.results.build``). A thread samples the process's anonymous RSS (RssAnon: arrays,
tensors, heap) every 20 ms. Printed: the peak per phase, the job's peak, and the kernel's
high-water mark of the whole RSS (VmHWM, which adds torch's shared libraries), with the ratio
of the largest job's peak to the smallest's (the issue's targets: <= 2.5 GB at 600 slices,
and <= 1.3x the 150-slice peak).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MB = 1024 * 1024


def status(field: str) -> int:
    """A /proc/self/status figure in bytes (VmHWM, RssAnon, ...)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes() -> int:
    """The process's own memory: anonymous pages (heap, arrays, tensors). The file-backed part
    of RSS (torch's shared libraries, ~0.4 GB) is the same for every study, and the kernel may
    drop it while the job runs (here DAMON pages out cold file pages), which would blur the
    study-sized part."""
    return status("RssAnon")


def high_water_bytes() -> int:
    return status("VmHWM")


class Sampler(threading.Thread):
    """The peak RSS seen in each named phase."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.phase = "start"
        self.peaks: dict[str, int] = {}
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.02):
            self.note()

    def note(self) -> None:
        now = rss_bytes()
        self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), now)

    def enter(self, phase: str) -> None:
        self.note()
        self.phase = phase
        self.note()


def child(series: Path, device: str) -> None:
    """One job, as a worker runs it; prints one JSON line of figures."""
    sampler = Sampler()
    sampler.start()
    from pydicom import dcmread  # noqa: PLC0415

    from dicom_node.settings import BUILTIN_MODELS, ProfileSettings  # noqa: PLC0415
    from workers.inference.pipeline import JobInput, SeriesInput, run  # noqa: PLC0415
    from workers.inference.runners import ModelCache  # noqa: PLC0415
    from workers.results.build import build_results  # noqa: PLC0415

    sampler.enter("model loaded")
    cache = ModelCache(BUILTIN_MODELS, device)
    manifest = cache.get("ct-tissue").manifest
    paths = tuple(sorted(series.glob("*.dcm")))
    sampler.enter("inference")
    t0 = time.perf_counter()
    job = JobInput("bench", 1, "ct-tissue", (SeriesInput("bench", paths),))
    with tempfile.TemporaryDirectory() as tmp:
        summary = run(job, cache, Path(tmp))
        t1 = time.perf_counter()
        sampler.enter("SEG + SR")
        sources = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in paths}
        build_results(
            summary, manifest, {"default": ProfileSettings()}, sources, at=datetime.now(UTC)
        )
        t2 = time.perf_counter()
    sampler.enter("end")
    sampler.stopped.set()
    print(
        json.dumps(
            {
                "slices": len(paths),
                "peaks_mb": {k: round(v / MB) for k, v in sampler.peaks.items()},
                "vmhwm_mb": round(high_water_bytes() / MB),
                "peak_anon_mb": round(max(sampler.peaks.values()) / MB),
                "inference_s": round(t1 - t0, 1),
                "results_s": round(t2 - t1, 1),
                "stages_s": {k: round(v, 2) for k, v in summary.series[0].timings_s.items()},
            }
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", default="150,300,600")
    parser.add_argument("--device", default="cpu", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.device)
        return
    from bench.inference import build_series  # noqa: PLC0415

    sizes = [int(s) for s in args.slices.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            folder = Path(tmp) / f"ct-{n}"
            folder.mkdir()
            build_series(folder, n)
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(folder), "--device", args.device],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode != 0:
                sys.exit(f"{n} slices: the job failed:\n{done.stderr[-3000:]}")
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    phases = list(rows[0]["peaks_mb"])
    print("peak anonymous RSS per phase, MB; the job's peak; VmHWM (+ shared libraries), MB")
    print(f"{'slices':>7}  " + "  ".join(f"{p:>13}" for p in phases) + "   peak  VmHWM")
    for r in rows:
        peaks = "  ".join(f"{r['peaks_mb'].get(p, 0):>13}" for p in phases)
        print(f"{r['slices']:>7}  {peaks}  {r['peak_anon_mb']:>5}  {r['vmhwm_mb']:>5}")
    for r in rows:
        print(
            f"{r['slices']} slices: inference {r['inference_s']} s {r['stages_s']}, "
            f"SEG + SR {r['results_s']} s"
        )
    small, large = rows[0], rows[-1]
    for key, what in (("peak_anon_mb", "anonymous RSS"), ("vmhwm_mb", "VmHWM")):
        print(
            f"{what}: peak at {large['slices']} slices {large[key] / 1024:.2f} GB "
            f"(target <= 2.5); {large['slices']} / {small['slices']} slices: "
            f"{large[key] / small[key]:.2f} (target <= 1.3)"
        )


if __name__ == "__main__":
    main()
