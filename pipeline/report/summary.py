"""The report's opening: what the run's profile is good for, and the segmentation answer.

A reader needs three things before any table: whether this run is evidence at all (the default
``cpu`` profile is a smoke-scale run that shows the pipeline works, and at its image size and
budget an "effect" is noise), the forest plot, and one paragraph saying whether any synthetic
condition beat ``real+classical``. The paragraph is computed from the segment stage's
``metrics.json`` (``pipeline.augment.segment.reading.answer``), never written by hand.
"""

from __future__ import annotations

from typing import Any

# What each profile's numbers can carry. The sizes and budgets come from the run's params.
PURPOSE = {
    "cpu": (
        "a smoke-scale run that shows the pipeline works end to end, not evidence: at this image "
        "size and budget, with this few patients and seeds, a difference between conditions "
        "(even one whose CI excludes 0) says nothing about the methods. For evidence run the "
        "full profile (CPU, hours) or the paper profile (GPU)."
    ),
    "full": (
        "the complete CT grid on CPU: evidence at CPU scale, for these small generators; read "
        "every difference with its CI."
    ),
    "paper": "the GPU-scale run, at the paper's image size and budgets: the run to quote.",
}


def _budget(params: dict[str, Any]) -> str:
    """``32 px slices, 80 generator steps, 300 UNet steps, 1 seed``: what the params give."""
    parts = []
    if params.get("image_size"):
        parts.append(f"{params['image_size']} px slices")
    if params.get("ct_train_steps"):
        parts.append(f"{params['ct_train_steps']} generator training steps")
    if params.get("segment_steps"):
        parts.append(f"{params['segment_steps']} UNet steps per run")
    seeds = params.get("segment_seeds")
    if isinstance(seeds, int):  # a report of an older run: one count
        seeds = [seeds]
    if seeds:
        count = str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"
        parts.append(f"{count} seed{'' if count == '1' else 's'} per condition")
    return ", ".join(parts)


# The cpu profile's sentence is about its phantom cohort: a run of the same profile with its
# slices pointed at real patients (hand-set sizes and budgets) is not that smoke run.
REAL_COHORT = (
    "the cpu profile's settings changed by hand for a cohort of real patients: not the default "
    "smoke run; read every difference with its CI, and the patient and seed counts of each row."
)


def profile_text(params: dict[str, Any]) -> dict[str, str]:
    """The run's profile ``name``, its ``scale`` (sizes and budgets, may be empty) and what its
    numbers are good for (``purpose``): the template writes them as one paragraph.
    ``params["cohort"]`` (``phantom`` or ``patients``, from :func:`run_shape`) picks the cpu
    sentence; an older run's params without it read as the phantom default."""
    name = params.get("profile") or "cpu"
    purpose = PURPOSE.get(name, "a custom profile: judge its scale from the settings below.")
    if name == "cpu" and params.get("cohort") == "patients":
        purpose = REAL_COHORT
    return {"name": name, "scale": _budget(params), "purpose": purpose}
