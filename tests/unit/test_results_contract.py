"""The result contract (``dicom_node.results``): a job row's JSON, as every earlier version of
the node stored it, reads back into the types and writes out unchanged."""

from __future__ import annotations

import copy
from typing import Any

from dicom_node.results import BuiltResults, JobSummary, LabelMeasure, ObjectKind, ResultObject

STORED: dict[str, Any] = {
    "model": "ct-tissue",
    "version": "1.0.0",
    "weights_sha256": "ab" * 32,
    "device": "cpu",
    "attempt": 2,
    "path": "/var/lib/dicom-node/results/job-1/attempt-2",
    "confidence_map": True,
    "series": [
        {
            "series_uid": "1.2.3.4",
            "mask": "mask-1.2.3.4.npz",
            "frames": 42,
            "source_shape": [42, 512, 512],
            "model_shape": [56, 128, 128],
            "source_spacing_mm": [4.0, 0.48, 0.48],
            "model_spacing_mm": [3.0, 1.9, 1.9],
            "tilt_deg": 18.5,
            "uniform": False,
            "spacing": "23 x 4.00 mm + 1 x 5.10 mm + 17 x 7.00 mm",
            "stacks": [{"number": 1, "chosen": True, "frames": 42}],
            "notes": ["2 identical duplicates collapsed"],
            "labels": [
                {
                    "value": 3,
                    "name": "bone",
                    "voxels": 1200,
                    "volume_ml": 12.5,
                    "mean": 640.2,
                    "std": 80.1,
                    "max_probability": 0.99,
                },
                {
                    "value": 1,
                    "name": "air",
                    "voxels": 0,
                    "volume_ml": 0.0,
                    "mean": None,
                    "std": None,
                    "max_probability": None,
                },
            ],
            "timings_s": {"load": 0.5, "preprocess": 0.1, "forward": 2.0, "postprocess": 0.2},
        }
    ],
    "results": {
        "objects": {
            "default": [
                {
                    "kind": "seg",
                    "path": "/r/seg-9.1.dcm",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.66.4",
                    "sop_instance_uid": "9.1",
                    "series_uid": "1.2.3.4",
                },
                {
                    "kind": "sr",
                    "path": "/r/sr-9.2.dcm",
                    "sop_class_uid": "1.2.840.10008.5.1.4.1.1.88.33",
                    "sop_instance_uid": "9.2",
                    "series_uid": "1.2.3.4",
                },
            ]
        },
        "timings_s": {"seg": 1.0, "pm": 0.0, "sr": 0.2, "sc": 0.0, "validate": 0.3},
        "source_repairs": ["empty Specific Character Set removed"],
    },
}


def test_a_stored_row_reads_back_typed_and_writes_out_unchanged() -> None:
    summary = JobSummary.from_json(copy.deepcopy(STORED))
    assert summary.to_json() == STORED
    [series] = summary.series
    assert series.labels[0] == LabelMeasure(3, "bone", 1200, 12.5, 640.2, 80.1, 0.99)
    assert [o.kind for o in summary.objects_for("default")] == [ObjectKind.SEG, ObjectKind.SR]
    assert summary.objects_for("nowhere") == ()


def test_a_summary_before_its_results_has_no_objects() -> None:
    bare = {k: v for k, v in copy.deepcopy(STORED).items() if k != "results"}
    summary = JobSummary.from_json(bare)
    assert summary.results is None and summary.objects_for("default") == ()
    assert "results" not in summary.to_json()
    seg = ResultObject(ObjectKind.SEG, "/r/x.dcm", "1.2", "9.9", "1.2.3.4")
    done = summary.with_results(BuiltResults({"default": (seg,)}))
    assert done.objects_for("default") == (seg,) and summary.results is None  # frozen: a copy
