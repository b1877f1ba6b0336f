"""Results benchmark: SEG + SR build time, and end-to-end latency back to a PACS, in one run.

    python bench/results.py [--slices 300] [--repeats 2] [--skip-e2e]

1. Build: a 300-slice 512x512 CT series made from the real Philips slices (bench/inference.py),
   a mask with 4 segments (HU bands of the real pixel data), then the node's SEG + SR
   (``workers.results``: coded segments, provenance, validation read-back excluded) against a
   plain single-threaded ``highdicom.seg.Segmentation`` + ``ComprehensiveSR`` call with the same
   inputs. Best of ``--repeats``.
2. End to end: ``dicom-node serve`` (embedded worker, the test threshold model, a dcmtk
   ``storescp`` destination) receives the series from ``storescu``. Prints the latency from the
   last C-STORE sent to the last result acknowledged by the destination, with the completion
   wait (the quiet period) and each later stage shown separately, from the node's own records.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import highdicom as hd
import numpy as np
from pydicom import dcmread
from pydicom.sr.codedict import codes
from sqlalchemy import select

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.inference import build_series  # noqa: E402
from dicom_node.db.models import Export, Job, Study  # noqa: E402
from dicom_node.db.session import make_engine  # noqa: E402
from dicom_node.results import LabelMeasure  # noqa: E402
from tests.helpers import free_port, wait_for  # noqa: E402
from tests.models import band_labels, build_model  # noqa: E402
from tests.peers import NodeProcess, dcmtk, storescp, write_node_config  # noqa: E402
from workers.inference.manifest import Manifest  # noqa: E402
from workers.inference.runners import ModelCache  # noqa: E402
from workers.results.seg import (  # noqa: E402
    Mask,
    build_seg,
    quiet_person_names,
    segment_descriptions,
)
from workers.results.sr import build_sr  # noqa: E402

BANDS = (-500.5, -50.5, 150.5, 300.5)  # 4 segments: fat-ish, soft tissue, dense, bone


def mask_of(paths: list[Path]) -> tuple[list, Mask]:  # type: ignore[type-arg]
    sources = [dcmread(p) for p in paths]
    labels = np.stack(
        [
            band_labels(
                ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept), BANDS
            ).astype(np.uint8)
            for ds in sources
        ]
    )
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    return sources, Mask(labels, uids, (0,) * len(uids))


def summary_of(mask: Mask) -> list[LabelMeasure]:
    return [
        LabelMeasure(
            value=v,
            name=f"band {v}",
            voxels=int((mask.labels == v).sum()),
            volume_ml=1.0,
            mean=0.0,
            std=1.0,
            max_probability=1.0,
        )
        for v in range(1, len(BANDS) + 1)
    ]


def node_build(sources: list, mask: Mask, manifest: Manifest) -> float:  # type: ignore[type-arg]
    summary = summary_of(mask)  # the pipeline measured these already
    t = time.perf_counter()
    at = datetime.now(UTC)
    seg = build_seg(sources, mask, manifest, weights_sha256="0" * 64, at=at)
    build_sr(seg, sources, mask, summary, manifest, weights_sha256="0" * 64, at=at)
    return time.perf_counter() - t


def plain_seg(sources: list, mask: Mask, manifest: Manifest) -> hd.seg.Segmentation:  # type: ignore[type-arg]
    return hd.seg.Segmentation(
        source_images=sources,
        pixel_array=mask.labels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(manifest),
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bench",
        manufacturer_model_name="bench",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=False,
        workers=0,
    )


def plain_build(sources: list, mask: Mask, manifest: Manifest) -> float:  # type: ignore[type-arg]
    """The same content with highdicom alone: one call each, single-threaded, no provenance."""
    t = time.perf_counter()
    with quiet_person_names():
        seg = plain_seg(sources, mask, manifest)
    groups = [
        hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(identifier=f"segment {n}"),
            referenced_segment=hd.sr.ReferencedSegment(
                sop_class_uid=seg.SOPClassUID,
                sop_instance_uid=seg.SOPInstanceUID,
                segment_number=n,
                source_series=hd.sr.SourceSeriesForSegmentation(sources[0].SeriesInstanceUID),
            ),
            measurements=[
                hd.sr.Measurement(
                    name=codes.SCT.Volume,
                    value=1.0,
                    unit=hd.sr.CodedConcept("mL", "UCUM", "milliliter"),
                )
            ],
        )
        for n in range(1, len(BANDS) + 1)
    ]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(),
        procedure_reported=codes.SCT.ComputedTomography,
        imaging_measurements=groups,
        referenced_images=[sources[0]],
    )
    hd.sr.ComprehensiveSR(
        evidence=[seg, sources[0]],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="bench",
    )
    return time.perf_counter() - t


def build_benchmark(work: Path, paths: list[Path], repeats: int) -> None:
    build_model(work / "models", "bands", "torchscript", threshold_hu=BANDS)
    manifest = ModelCache(work / "models", "cpu").get("bands").manifest
    sources, mask = mask_of(paths)
    frames = int((mask.labels > 0).any(axis=(1, 2)).sum())
    print(f"mask {mask.labels.shape}, {len(BANDS)} segments, {frames} non-empty slices")
    node = min(node_build(sources, mask, manifest) for _ in range(repeats))
    plain = min(plain_build(sources, mask, manifest) for _ in range(repeats))
    print(f"{'SEG + SR, dicom-node (workers.results)':<44}{node:>7.2f} s")
    print(f"{'SEG + SR, plain highdicom, single-threaded':<44}{plain:>7.2f} s")
    print(f"node / plain: {node / plain:.2f}")


def e2e_benchmark(work: Path, paths: list[Path], quiet_s: float) -> None:
    # the test model at a 2 mm grid, as a CPU deployment would run it
    build_model(
        work / "e2e-models", "threshold", "torchscript", extra="target_spacing_mm = [2.0, 2.0, 2.0]"
    )
    with storescp(work / "received") as dest_port:
        port = free_port()
        extra = f"""
[completion]
quiet_period_s = {quiet_s}
settle_s = 0.5
sweep_interval_s = 0.2
[queue]
reconcile_interval_s = 0.5
[export]
poll_interval_s = 0.2
[models]
root = "{work / "e2e-models"}"
device = "cpu"
[[rules]]
name = "ct"
models = ["threshold"]
[rules.match]
modality = ["CT"]
[[destinations]]
name = "archive"
ae_title = "STORESCP"
host = "127.0.0.1"
port = {dest_port}
"""
        config = write_node_config(
            work / "node.toml", port=port, workdir=work / "node", extra=extra
        )
        node = NodeProcess(config, work / "node.log")
        node.start()
        try:
            wait_for(
                lambda: dcmtk("echoscu", "-aec", "DICOM_NODE", "127.0.0.1", port).returncode == 0,
                60,
                "node listening",
            )
            t0 = time.time()
            sent = dcmtk("storescu", "-aec", "DICOM_NODE", "127.0.0.1", port, *paths, timeout=600)
            last_sent = time.time()
            assert sent.returncode == 0, sent.stderr
            engine = make_engine(f"sqlite:///{work / 'node' / 'index.db'}")

            def done() -> bool:
                with engine.connect() as conn:
                    return conn.execute(select(Job.state)).scalar() == "DONE"

            wait_for(done, 600, "job DONE")
            with engine.connect() as conn:
                study = conn.execute(select(Study)).one()
                job = conn.execute(select(Job)).one()
                delivered = conn.execute(select(Export.delivered_at)).scalars().all()
            last_ack = max(delivered).timestamp()
            stages = [
                ("send (storescu, 300 instances)", last_sent - t0),
                (
                    "completion wait (settle after release)",
                    study.completed_at.timestamp() - last_sent,
                ),
                ("queued -> running", job.started_at.timestamp() - job.queued_at.timestamp()),
                (
                    "inference + SEG/SR + validation",
                    job.results_ready_at.timestamp() - job.started_at.timestamp(),
                ),
                ("export to storescp (acknowledged)", last_ack - job.results_ready_at.timestamp()),
            ]
            for name, seconds in stages:
                print(f"  {name:<40}{seconds:>7.2f} s")
            total = last_ack - last_sent
            print(f"last C-STORE sent -> last result acknowledged: {total:.2f} s")
            print(
                f"  of which completion wait {stages[1][1]:.2f} s; after completion "
                f"{total - stages[1][1]:.2f} s"
            )
            timings = job.result["series"][0]["timings_s"]
            print(
                "  inference stages: "
                + ", ".join(f"{k} {v:.2f}" for k, v in timings.items())
                + "; results: "
                + ", ".join(f"{k} {v:.2f}" for k, v in job.result["results"]["timings_s"].items())
            )
        finally:
            node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--quiet-period", type=float, default=5.0)
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "series").mkdir()
        paths = build_series(work / "series", args.slices)
        build_benchmark(work, paths, args.repeats)
        if not args.skip_e2e:
            e2e_benchmark(work, paths, args.quiet_period)


if __name__ == "__main__":
    main()
