"""``dicom-node models list``: every plug-in's manifest parsed and its weights' sha256 checked,
without importing torch (the node may run without it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import Engine


def describe_models(root: Path) -> list[dict[str, Any]]:
    from workers.inference.manifest import (  # noqa: PLC0415
        MANIFEST,
        ModelError,
        load_manifest,
        sha256_of,
    )

    rows: list[dict[str, Any]] = []
    folders = sorted(p.parent for p in root.glob(f"*/{MANIFEST}")) if root.is_dir() else []
    for folder in folders:
        row: dict[str, Any] = {"name": folder.name, "version": None, "runner": None}
        try:
            manifest, _ = load_manifest(root, folder.name)
            row.update(version=manifest.version, runner=manifest.runner.kind)
            row["labels"] = [label.name for label in manifest.labels]
            row["status"] = _weights_status(
                folder, manifest.runner.weights, manifest.runner.sha256, sha256_of
            )
        except ModelError as exc:
            row["status"] = str(exc)
        rows.append(row)
    return rows


def _weights_status(folder: Path, weights: str, sha256: str, digest: Any) -> str:
    path = folder / weights
    if not path.is_file():
        return f"weights missing: {weights}"
    return "ok" if digest(path) == sha256 else f"weights fail the sha256 check ({weights})"


def models_overview(engine: Engine, root: Path) -> list[dict[str, Any]]:
    """The models page and API: every installed model (and every model jobs name that is not
    installed) with its run statistics and daily trend."""
    from dicom_node.admin.reports import model_stats  # noqa: PLC0415 - reports imports settings

    stats = model_stats(engine)
    rows = describe_models(root)
    names = {r["name"] for r in rows}
    for name in sorted(set(stats) - names):
        rows.append({"name": name, "version": None, "runner": None, "status": "not installed"})
    for row in rows:
        row["stats"] = found = stats.get(row["name"])
        days = (found or {}).get("days", [])
        labels = sorted({k for d in days for k in d["mean_volume_ml"]})
        row["trend"] = {
            "days": [d["day"] for d in days],
            "positive": [round(d["positive_share"] * 100, 1) for d in days],
            "volumes": {k: [d["mean_volume_ml"].get(k) for d in days] for k in labels},
        }
    return rows
