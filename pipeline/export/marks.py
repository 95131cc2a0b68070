"""What a gate let through on request is said inside the DICOM files, not only in the receipt.

A slice exported with ``--allow-near-copies`` or ``--allow-implausible`` travels without its
receipt once it is in a PACS, so the files themselves carry the warning where a viewer shows it:

* Image Comments (0020,4000) of the sample's image and SEG says what is wrong with that sample
  (General Image module, PS3.3 C.7.6.1: "user-defined comments about the image");
* Series Description (0008,103E) of every series (images and SEGs) starts with
  ``[NEAR-COPIES]``, ``[IMPLAUSIBLE MASKS]`` or both: every viewer lists series by their
  description, and the description is the series', so it warns about the series as a whole.

Pure: the datasets are copied, never changed in place.
"""

from __future__ import annotations

import copy
from dataclasses import replace

from pipeline.export.dicom_set import LO_MAX, Instance
from pipeline.export.plausibility import PlausibilityResult, describe
from pipeline.export.privacy import GateResult, Selection
from pipeline.params.export import PlausibilityParams

NEAR_COPY, IMPLAUSIBLE = "near_copy", "implausible"
SERIES_LABELS = {NEAR_COPY: "NEAR-COPIES", IMPLAUSIBLE: "IMPLAUSIBLE MASKS"}
PANEL_LABELS = {NEAR_COPY: "NEAR-COPY", IMPLAUSIBLE: "IMPLAUSIBLE"}  # contact sheet titles


def marked_description(description: str, kinds: list[str]) -> str:
    """``description`` headed by the labels of ``kinds`` (``NEAR_COPY``, ``IMPLAUSIBLE``).

    Cut to 64 characters (LO) with the word SYNTHETIC kept: the warning comes first because
    viewers cut long descriptions at the end.
    """
    if not kinds:
        return description
    head = f"[{', '.join(SERIES_LABELS[k] for k in kinds)}] "
    text = head + description
    if len(text) <= LO_MAX:
        return text
    cut = head + description[: LO_MAX - len(head) - 3] + "..."
    return cut if "SYNTHETIC" in cut.upper() else head + "SYNTHETIC"


def mark_instances(
    instances: list[Instance], warnings: dict[int, dict[str, str]]
) -> list[Instance]:
    """Copies of ``instances`` with the warnings of their samples in the files.

    ``warnings`` maps an Instance Number to ``{kind: sentence}`` (kind ``NEAR_COPY`` or
    ``IMPLAUSIBLE``); the sentences are appended to that image's and SEG's Image Comments, and
    every instance's Series Description is headed by the kinds found anywhere in the set.
    """
    kinds = [k for k in SERIES_LABELS if any(k in w for w in warnings.values())]
    if not kinds:
        return list(instances)
    out = []
    for inst in instances:
        ds = copy.deepcopy(inst.dataset)
        said = warnings.get(inst.number, {})
        if said:
            ds.ImageComments = " ".join([str(ds.get("ImageComments", "")), *said.values()]).strip()
        ds.SeriesDescription = marked_description(str(ds.SeriesDescription), kinds)
        out.append(replace(inst, dataset=ds))
    return out


def sample_warnings(
    selection: Selection,
    gate: GateResult | None,
    plausible: PlausibilityResult,
    params: PlausibilityParams,
) -> dict[int, dict[str, str]]:
    """Instance Number -> ``{kind: sentence}`` of every exported sample a gate flagged.

    Only slices exported on request (``selection.allowed``, ``selection.implausible_allowed``)
    can be flagged; Instance Numbers follow ``selection.chosen`` from 1.
    """
    near, odd = set(selection.allowed), set(selection.implausible_allowed)
    out: dict[int, dict[str, str]] = {}
    for k, i in enumerate(selection.chosen):
        said = {}
        if i in near and gate is not None:
            said[NEAR_COPY] = (
                f"WARNING: NEAR-COPY of a real training slice (distance {gate.distances[i]:.3f}"
                f" <= threshold {gate.threshold:.3f}), exported with --allow-near-copies."
            )
        if i in odd:
            said[IMPLAUSIBLE] = (
                f"WARNING: IMPLAUSIBLE pancreas mask ({describe(plausible, i, params)}), "
                "exported with --allow-implausible."
            )
        if said:
            out[k + 1] = said
    return out
