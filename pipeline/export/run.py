"""``gvae export``: a synthetic CT set as one DICOM study for clinicians, optionally sent to a PACS.

Reads a ``gvae generate`` folder and writes one folder (replaced atomically)::

    dicom/image_0001.dcm ...   CT images in HU, series 1 (pipeline.export.dicom_set)
    dicom/seg_0001.dcm ...     one DICOM Segmentation per image, each in a series of its own
    contact_sheet.png          the exported slices with their masks filled and outlined
    receipt.json               every instance's SOP Instance UID, the gates, PACS outcomes

The privacy gate (pipeline.export.privacy) and the plausibility gate of the masks
(pipeline.export.plausibility) compare the synthetic slices with the real slices the generator
was trained on: ``--slices DIR``, by default the slices folder recorded in the generator's run
(``<run>/data.json``). ``--pacs HOST:PORT`` then C-STOREs the set; sending again with
``gvae export --out DIR --pacs HOST:PORT`` (no ``--synthetic``) asks that PACS what it holds
and sends only what it lacks (``--force``: everything). Design and receipt format:
docs/export.md.
"""

from __future__ import annotations

import datetime as dt
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from common.atomic import atomic_dir, write_json
from pipeline.errors import StageError
from pipeline.io.shards import INDEX_NAME, load_slices, read_index
from pipeline.params.export import AE_TITLE, ExportParams

PROJECT = "gvae-pipeline"
SPLIT = "synthetic"


def _provenance(index: dict, synthetic_dir: Path):
    """Project and model with versions: the package version and the checkpoint's digest."""
    from pipeline.export.dicom_set import Provenance

    source = index.get("source") or {}
    if not source.get("model"):
        raise StageError(
            f"{synthetic_dir / INDEX_NAME}: no source model; not a `gvae generate` set"
        )
    try:
        version = metadata.version(PROJECT)
    except metadata.PackageNotFoundError:
        version = "unknown"
    ckpt = Path(source["run"]) / "checkpoint.pt" if source.get("run") else None
    if ckpt is not None and ckpt.is_file():
        from models.train.checkpoint import checkpoint_digest

        model_version = f"checkpoint sha256:{checkpoint_digest(ckpt)}"
    else:
        model_version = "checkpoint not available at export"
    return Provenance(PROJECT, version, str(source["model"]), model_version)


def _contact_sheet(dest: Path, instances, params: ExportParams, warnings: dict) -> None:
    """Tiles of what was written: stored values back to HU, windowed, mask from the SEG, filled
    so that its extent shows; the title says what a gate let through on request."""
    from pipeline.cohort.slicing import window_hu
    from pipeline.export.marks import PANEL_LABELS
    from pipeline.io.contact_sheet import Panel, write_contact_sheet

    images = {i.number: i for i in instances if i.kind == "image"}
    segs = {i.number: i for i in instances if i.kind == "segmentation"}
    first = params.windows[0]
    panels = []
    for number, img in images.items():
        ds = img.dataset
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        mask = segs[number].dataset.pixel_array.astype(np.uint8).reshape(hu.shape)
        tags = "".join(f" {PANEL_LABELS[k]}" for k in warnings.get(number, {}))
        title = f"SYNTHETIC #{number} (draw {img.draw}){tags}"
        panels.append(Panel(window_hu(hu, first.level, first.width), mask, title))
    write_contact_sheet(
        dest, panels, ncols=params.contact_sheet_columns, fill=params.contact_sheet_fill
    )


def _gates(params: ExportParams, synthetic_dir: Path, slices_dir: Path | None, allow: bool):
    """The synthetic set, its index and provenance, and both gates' results with their notes."""
    from pipeline.export.gates import near_copy, plausibility, reference, training_slices

    try:  # messages of the readers and of the gates name their files
        index = read_index(synthetic_dir, made_by="gvae generate")
        images, masks, meta = load_slices(synthetic_dir, SPLIT)
        prov = _provenance(index, synthetic_dir)
        real_dir = training_slices(index, slices_dir)
        train = reference(real_dir, meta, index)
        near = near_copy(params, images, train, real_dir, allow)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    return (images, masks, meta), index, prov, near, plausibility(params.plausibility, masks, train)


def run(
    params: ExportParams,
    synthetic_dir: Path,
    out_dir: Path,
    n: int,
    slices_dir: Path | None = None,
    allow_near_copies: bool = False,
    allow_implausible: bool = False,
) -> dict[str, Any]:
    """Build the export set of ``synthetic_dir`` into ``out_dir``; return its receipt."""
    from pipeline.export.dicom_set import build_set
    from pipeline.export.gates import report_near_copies, report_plausibility
    from pipeline.export.marks import mark_instances, sample_warnings
    from pipeline.export.privacy import select_slices
    from pipeline.export.receipt import (
        CONTACT_SHEET_NAME,
        RECEIPT_NAME,
        build_receipt,
        gate_record,
        mask_fields,
        plausibility_record,
    )

    synthetic_dir, out_dir = Path(synthetic_dir), Path(out_dir)
    syn, index, prov, (gate, note), (odd, odd_note) = _gates(
        params, synthetic_dir, slices_dir, allow_near_copies
    )
    images, masks, meta = syn
    draws = meta["slice_index"]
    try:
        flags = None if gate is None else gate.flags
        sel = select_slices(flags, len(images), n, allow_near_copies, odd.flags, allow_implausible)
        ident, instances = build_set(
            images[sel.chosen],
            masks[sel.chosen],
            draws[sel.chosen],
            meta["window"],
            float(meta["pixel_mm"] or 0),
            params,
            prov,
            dt.datetime.now().replace(microsecond=0),
        )
    except ValueError as exc:
        raise StageError(f"{synthetic_dir}: {exc}") from None
    warnings = sample_warnings(sel, gate, odd, params.plausibility)
    instances = mark_instances(instances, warnings)
    near = [
        (None, None) if gate is None else (bool(gate.flags[i]), float(gate.distances[i]))
        for i in sel.chosen
    ]
    source = {
        "seed": (index.get("source") or {}).get("seed"),
        "size": int(meta["size"]),
        "pixel_mm": float(meta["pixel_mm"]),
        "window": meta["window"],
        "synthetic_slices": len(images),
        "exported": len(sel.chosen),
    }
    gates = (
        gate_record(gate, sel, draws, allow_near_copies, note, params.memorization),
        plausibility_record(odd, sel, draws, allow_implausible, odd_note, params.plausibility),
    )
    mask_rows = [mask_fields(odd, i) for i in sel.chosen]
    receipt = build_receipt(ident, instances, prov, source, *gates, near, mask_rows)
    with atomic_dir(out_dir) as tmp:
        (tmp / "dicom").mkdir()
        for inst in instances:
            inst.dataset.save_as(tmp / inst.file, enforce_file_format=True)
        _contact_sheet(tmp / CONTACT_SHEET_NAME, instances, params, warnings)
        write_json(tmp / RECEIPT_NAME, receipt)
    report_near_copies(gate, sel, draws, note)
    report_plausibility(odd, sel, draws, odd_note, params.plausibility)
    return receipt


def send(
    params: ExportParams,
    out_dir: Path,
    pacs: str,
    aet: str | None,
    called: str | None,
    force: bool = False,
):
    """Deliver ``out_dir``'s export to ``pacs``: only what that PACS lacks (it is asked, see
    ``pipeline.export.pacs``), everything with ``force``; update the receipt.

    ``aet`` and ``called`` are the AE titles given on the command line (``None``: the params').
    Returns the new receipt; ``StageError`` with the receipt written when anything is missing.
    """
    from pipeline.export.pacs import Destination, Timeouts, deliver, parse_address
    from pipeline.export.receipt import RECEIPT_NAME, read_receipt

    try:
        host, port = parse_address(pacs)
        receipt = read_receipt(out_dir)
    except ValueError as exc:
        raise StageError(str(exc)) from None
    if receipt is None:
        raise StageError(f"{out_dir}: no {RECEIPT_NAME}; build the export with --synthetic first")
    dest = Destination(host, port, called or params.called_aet, aet or params.calling_aet)
    for flag, title in (("--aet", dest.calling_aet), ("--called-aet", dest.called_aet)):
        if not AE_TITLE.match(title):
            raise StageError(f"{flag}: not a DICOM AE title (1-16 characters, no '\\'): {title!r}")
    timeouts = Timeouts(params.connect_timeout_s, params.acse_timeout_s, params.dimse_timeout_s)
    receipt, error = deliver(receipt, out_dir, dest, timeouts, force)
    write_json(out_dir / RECEIPT_NAME, receipt)
    last = receipt["deliveries"][-1]
    total = len(receipt["instances"])
    stored = total - last["missing_after"]
    if error:
        retry_titles = "".join(
            f" {flag} {value}"
            for flag, value in (("--aet", aet), ("--called-aet", called))
            if value
        )
        raise StageError(
            f"{error}. {stored} of {total} instances are stored at {dest.key} "
            f"({out_dir / RECEIPT_NAME} lists which); `gvae export --out {out_dir} --pacs {pacs}"
            f"{retry_titles}` sends only the missing ones"
        )
    there = total - last["attempted"]
    print(
        f"gvae export: {dest.key} holds all {total} instances ({last['attempted']} sent now, "
        f"{there} already there{' as C-FIND confirmed' * bool(there)})"
    )
    return receipt


def _check_replaceable(out_dir: Path) -> None:
    """``StageError`` unless ``out_dir`` may be replaced whole by a new export.

    Not a folder of something else (a mistyped --out must not wipe it), and not an export that
    reached a PACS: rebuilding it would give the same slices new UIDs.
    """
    from pipeline.export.receipt import RECEIPT_NAME, delivered, read_receipt

    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not (out_dir / RECEIPT_NAME).is_file():
        raise StageError(
            f"{out_dir}: exists and is not an export folder (no {RECEIPT_NAME}); "
            "refusing to replace it, choose another --out"
        )
    try:
        sent = delivered(read_receipt(out_dir))
    except ValueError:
        return  # a damaged export holds nothing left to protect
    if sent:
        where = ", ".join(f"{v} at {k}" for k, v in sent.items())
        raise StageError(
            f"{out_dir} holds an export already delivered ({where}); rebuilding would give "
            f"it new UIDs. Send what is missing with `gvae export --out {out_dir} --pacs "
            "HOST:PORT`, or export to another --out"
        )
