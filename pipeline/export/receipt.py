"""The JSON receipt of an export set: every instance, the privacy gate, every delivery.

Format ``gvae-export-receipt/3`` (described field by field in docs/export.md; version 2 added
the plausibility gate and the PACS query of a retry, version 3 one SEG series per image;
receipts of versions 1 and 2 are still read). The receipt never names a real patient, case or
file path: it sits beside the DICOM files and may travel with them. ``instances[*].pacs`` is
maintained by ``pipeline.export.pacs``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.export.dicom_set import Instance, Provenance, SetIdentity
from pipeline.export.plausibility import PlausibilityResult
from pipeline.export.privacy import GateResult, Selection

FORMAT = "gvae-export-receipt/3"
READABLE = ("gvae-export-receipt/1", "gvae-export-receipt/2", FORMAT)
RECEIPT_NAME = "receipt.json"
CONTACT_SHEET_NAME = "contact_sheet.png"


def gate_record(
    gate: GateResult | None,
    selection: Selection,
    draws: Any,
    allow: bool,
    note: str | None,
    memo: Any,
) -> dict[str, Any]:
    """The ``near_copy_gate`` block: whether it ran, its threshold, what it refused/allowed.

    ``draws`` are the draw numbers of the synthetic set's slices, ``memo`` the
    ``MemorizationParams`` used. Slices are named by draw number, never by the real case they
    resemble.
    """

    def entries(indices: list[int]) -> list[dict[str, Any]]:
        if gate is None:
            return []
        return [
            {
                "draw": int(draws[i]),
                "distance": float(gate.distances[i]),
                "relative_distance": float(gate.relative[i]),
            }
            for i in indices
        ]

    return {
        "ran": gate is not None,
        "note": note,
        "allow_near_copies": allow,
        "quantile": memo.quantile,
        "downsample": memo.downsample,
        "ratio": memo.ratio,
        "neighbours": memo.neighbours,
        "threshold": None if gate is None else gate.threshold,
        "calibrated_on": None if gate is None else f"real {gate.calibration} split",
        "refused": entries(selection.refused),
        "exported_near_copies": entries(selection.allowed),
    }


def plausibility_record(
    result: PlausibilityResult,
    selection: Selection,
    draws: Any,
    allow: bool,
    note: str | None,
    params: Any,
) -> dict[str, Any]:
    """The ``plausibility_gate`` block: its settings, the real ranges, what it refused/allowed.

    ``params`` is the ``PlausibilityParams`` used; ``note`` says why the range checks did not
    run (no real training masks), ``None`` when they did. Counts are per reason, every reason
    listed.
    """
    from pipeline.export.plausibility import REASONS

    def entries(indices: list[int]) -> list[dict[str, Any]]:
        rows = [mask_fields(result, i) for i in indices]
        return [
            {"draw": int(draws[i]), "reason": row.pop("implausible"), **row}
            for i, row in zip(indices, rows, strict=True)
        ]

    def counts(indices: list[int]) -> dict[str, int]:
        return {r: sum(result.reasons[i] == r for i in indices) for r in REASONS}

    real = result.ranges
    return {
        "note": note,
        "allow_implausible": allow,
        **params.model_dump(),
        "real_masks": None
        if real is None
        else {"masks": real.masks, "share": list(real.share), "components": list(real.components)},
        "refused_by_reason": counts(selection.implausible_refused),
        "exported_by_reason": counts(selection.implausible_allowed),
        "refused": entries(selection.implausible_refused),
        "exported_implausible": entries(selection.implausible_allowed),
    }


def mask_fields(result: PlausibilityResult, i: int) -> dict[str, Any]:
    """Slice ``i``'s mask as the receipt gives it: share, components, reason (``None``: fine)."""
    return {
        "mask_share": round(float(result.share[i]), 6),
        "mask_components": int(result.components[i]),
        "implausible": result.reasons[i] or None,
    }


def build_receipt(
    ident: SetIdentity,
    instances: list[Instance],
    prov: Provenance,
    source: dict[str, Any],
    gate: dict[str, Any],
    plausibility: dict[str, Any],
    near: list[tuple[bool | None, float | None]],
    masks: list[dict[str, Any]],
) -> dict[str, Any]:
    """The receipt of a freshly built set (no delivery yet).

    ``source``: size, pixel_mm, window, seed and counts of the synthetic set; ``near`` gives
    each exported sample, in instance-number order, its (near-copy flag, distance), or
    ``(None, None)`` where the gate did not run; ``masks`` gives each its ``mask_fields``;
    ``gate`` and ``plausibility`` are the two gates' blocks.
    """
    image_uid = {i.number: i.dataset.SOPInstanceUID for i in instances if i.kind == "image"}
    rows = []
    for inst in instances:
        flag, dist = near[inst.number - 1]
        rows.append(
            {
                "file": inst.file,
                "kind": inst.kind,
                "sop_class_uid": str(inst.dataset.SOPClassUID),
                "sop_instance_uid": str(inst.dataset.SOPInstanceUID),
                "series_instance_uid": str(inst.dataset.SeriesInstanceUID),
                "instance_number": inst.number,
                "draw": inst.draw,
                "references": None if inst.kind == "image" else image_uid[inst.number],
                "near_copy": flag,
                "distance": dist,
                **masks[inst.number - 1],
                "pacs": {},
            }
        )
    return {
        "format": FORMAT,
        "created": ident.created.isoformat(timespec="seconds"),
        "study": {
            "study_instance_uid": ident.study_uid,
            "study_id": ident.study_id,
            "patient_name": ident.patient_name,
            "patient_id": ident.patient_id,
            "image_series_instance_uid": ident.image_series_uid,
            # One SEG series per image, in Instance Number order.
            "seg_series_instance_uids": [
                str(i.dataset.SeriesInstanceUID) for i in instances if i.kind == "segmentation"
            ],
        },
        "source": {
            "project": prov.project,
            "project_version": prov.project_version,
            "model": prov.model,
            "model_version": prov.model_version,
            **source,
        },
        "near_copy_gate": gate,
        "plausibility_gate": plausibility,
        "contact_sheet": CONTACT_SHEET_NAME,
        "instances": rows,
        "deliveries": [],
    }


def read_receipt(export_dir: Path) -> dict[str, Any] | None:
    """The receipt of ``export_dir``, ``None`` if it has none; ``ValueError`` if unusable."""
    path = Path(export_dir) / RECEIPT_NAME
    if not path.is_file():
        return None
    try:
        receipt = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable receipt ({exc})") from None
    if not isinstance(receipt, dict) or receipt.get("format") not in READABLE:
        raise ValueError(f"{path}: not an export receipt of format {' or '.join(READABLE)}")
    missing = [r["file"] for r in receipt["instances"] if not (path.parent / r["file"]).is_file()]
    if missing:
        raise ValueError(f"{path}: lists {len(missing)} file(s) that are gone, e.g. {missing[0]}")
    return receipt


def delivered(receipt: dict[str, Any]) -> dict[str, int]:
    """Destination -> number of the receipt's instances stored there."""
    counts: dict[str, int] = {}
    for row in receipt["instances"]:
        for dest, outcome in (row.get("pacs") or {}).items():
            counts[dest] = counts.get(dest, 0) + (outcome.get("status") == "stored")
    return {k: v for k, v in counts.items() if v}
