"""The gates of ``gvae export`` around their pure cores: which real slices they compare with,
running them, and what they say on the console.

The near-copy gate's core is ``pipeline.export.privacy``, the plausibility gate's
``pipeline.export.plausibility``; both compare with the real train split of the slices the
generator was trained on. Design: docs/export.md.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.errors import StageError
from pipeline.io.shards import INDEX_NAME, load_slices, read_index
from pipeline.params.export import ExportParams, PlausibilityParams


def training_slices(index: dict, explicit: Path | None) -> Path | None:
    """``explicit``, else the slices folder recorded in the generator's run, if it still exists."""
    if explicit is not None:
        return explicit
    run = (index.get("source") or {}).get("run")
    try:
        record = json.loads((Path(run) / "data.json").read_text()) if run else {}
    except (OSError, json.JSONDecodeError):
        return None
    found = Path(record["slices"]) if record.get("slices") else None
    return found if found is not None and (found / INDEX_NAME).is_file() else None


def reference(slices_dir: Path | None, meta: dict, index: dict):
    """The real train split ``(images, masks, meta)`` of ``slices_dir``, ``None`` without one.

    ``ValueError`` naming the folder when it is not the generator's training data
    (``pipeline.export.privacy.check_reference``): both gates would compare with the wrong
    slices.
    """
    from pipeline.export.privacy import check_reference

    if slices_dir is None:
        return None
    train = load_slices(slices_dir, "train")
    check_reference(meta, train[2], (index.get("source") or {}).get("trained_on"), str(slices_dir))
    return train


def near_copy(params: ExportParams, images, train, slices_dir: Path | None, allow: bool):
    """(GateResult or None, note): the near-copy check against the real ``train`` split
    (``reference``), or why it could not run."""
    from pipeline.export.privacy import near_copy_gate

    if train is None:
        note = (
            "no real training slices found for the near-copy gate: pass --slices DIR (the "
            "slices folder the generator was trained on)"
        )
        if not allow:
            raise StageError(f"{note}, or --allow-near-copies to export without the check")
        return None, note
    unseen = {s: load_slices(slices_dir, s)[0] for s in ("test", "val") if s in _splits(slices_dir)}
    m = params.memorization
    try:
        gate = near_copy_gate(images, train[0], unseen, m, params.batch_size)
    except ValueError as exc:
        if not allow:
            raise StageError(
                f"{slices_dir}: near-copy gate: {exc}; --allow-near-copies exports without it"
            ) from None
        return None, f"near-copy gate not run: {exc}"
    return gate, None


def _splits(slices_dir: Path) -> set[str]:
    return set(read_index(slices_dir).get("splits", {}))


def plausibility(params: PlausibilityParams, masks, train):
    """(PlausibilityResult, note): the synthetic ``masks`` against the real ``train`` split's;
    ``note`` says why the area and component checks did not run, ``None`` when they did."""
    from pipeline.export.plausibility import plausibility_gate, real_ranges

    ranges, note = None, None
    if train is None:
        note = "no real training slices (pass --slices DIR)"
    else:
        try:
            ranges = real_ranges(train[1])
        except ValueError as exc:
            note = str(exc)
    if note is not None:
        note += ": the area and component checks did not run, empty and covers_image did"
    return plausibility_gate(masks, ranges, params), note


def report_plausibility(result, sel, draws, note: str | None, params: PlausibilityParams) -> None:
    """Say on the console which masks the plausibility gate refused or let through, and why."""
    from pipeline.export.plausibility import describe

    if note:
        print(f"gvae export: WARNING: plausibility gate: {note}")
    said = {
        key: "; ".join(f"draw {int(draws[i])} ({describe(result, i, params)})" for i in indices)
        for key, indices in (
            ("refused", sel.implausible_refused),
            ("allowed", sel.implausible_allowed),
        )
    }
    if sel.implausible_refused:
        print(
            f"gvae export: refused {len(sel.implausible_refused)} slices whose masks are no "
            f"plausible pancreas: {said['refused']}; not exported, the next slices took their "
            "place (--allow-implausible exports them)"
        )
    if sel.implausible_allowed:
        print(
            f"gvae export: WARNING: exporting {len(sel.implausible_allowed)} implausible masks "
            f"because of --allow-implausible: {said['allowed']}; marked in the DICOM files and "
            "the receipt"
        )


def report_near_copies(gate, sel, draws, note: str | None) -> None:
    """Say on the console which slices the gate refused or let through, and why."""
    if gate is None:
        print(f"gvae export: WARNING: {note} (exported because of --allow-near-copies)")
        return
    said = {
        key: ", ".join(f"draw {int(draws[i])} ({gate.distances[i]:.3f})" for i in indices)
        for key, indices in (("refused", sel.refused), ("allowed", sel.allowed))
    }
    head = (
        "near-copies of real training slices (distance <= threshold "
        f"{gate.threshold:.3f}, the {gate.calibration} split's quantile)"
    )
    if sel.refused:
        print(
            f"gvae export: refused {len(sel.refused)} {head}: {said['refused']}; not exported, "
            "the next clean slices took their place (--allow-near-copies exports them)"
        )
    if sel.allowed:
        print(
            f"gvae export: WARNING: exporting {len(sel.allowed)} {head} because of "
            f"--allow-near-copies: {said['allowed']}; marked in the DICOM files and the receipt"
        )
