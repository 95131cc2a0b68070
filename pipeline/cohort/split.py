"""Patient-level train/val/test split.

Splitting by patient, never by slice, is what keeps neighbouring slices of one patient from
sitting on both sides of the evaluation (Roberts et al., "Cross-validation strategies for data
with temporal, spatial, hierarchical, or phylogenetic structure", Ecography 2017).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import numpy as np

from pipeline.params.cohort import SplitError, SplitParams, check_disjoint

SPLITS: tuple[str, ...] = ("train", "val", "test")


def split_counts(n: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Return how many cases each split gets out of ``n``.

    Every split with a non-zero fraction gets ``max(1, round(fraction * n))`` cases, except the
    largest one (the first of train/val/test on ties), which takes the remainder so the counts
    sum to ``n``. Raises ``ValueError`` naming the counts when ``n`` is too small for that.
    """
    nonzero = [s for s in SPLITS if fractions[s] > 0]
    wanted = ", ".join(f"{s}={fractions[s]:g}" for s in SPLITS)
    if n < max(1, len(nonzero)):
        raise SplitError(
            f"cannot split {n} case(s) with fractions {wanted}: each of the {len(nonzero)} "
            f"split(s) with a non-zero fraction ({', '.join(nonzero)}) needs at least one case"
        )
    rest = max(nonzero, key=lambda s: fractions[s])
    counts = {s: max(1, round(fractions[s] * n)) if fractions[s] > 0 else 0 for s in SPLITS}
    counts[rest] = n - sum(c for s, c in counts.items() if s != rest)
    if counts[rest] < 1:
        got = ", ".join(f"{s}={counts[s]}" for s in SPLITS)
        raise SplitError(
            f"cannot split {n} case(s) with fractions {wanted}: would give {got}; "
            "every split with a non-zero fraction needs at least one case"
        )
    return counts


def split_cases(
    case_ids: Iterable[str], params: SplitParams, unavailable: Iterable[str] = ()
) -> dict[str, list[str]]:
    """Assign every case id to exactly one of train/val/test; return ``{split: sorted ids}``.

    With ``params.cases`` the explicit lists are used as given: a case missing from them is an
    error, and a listed case that is not among ``case_ids`` is an error unless it is in
    ``unavailable`` (cases the caller knows about but cannot use, e.g. failed ingest), in which
    case it is dropped. Otherwise the ids are sorted, shuffled with ``params.seed`` and cut by
    ``split_counts``, so the result depends on the seed and the set of ids, never on their order.
    """
    ids = list(case_ids)
    dupes = sorted(c for c, n in Counter(ids).items() if n > 1)
    if dupes:
        raise SplitError(f"duplicate case id(s): {', '.join(dupes)}")
    ids = sorted(ids)
    if params.cases is not None:
        out = _explicit(ids, params.cases, set(unavailable))
    else:
        fractions = {"train": params.train, "val": params.val, "test": params.test}
        counts = split_counts(len(ids), fractions)
        order = np.random.default_rng(params.seed).permutation(len(ids))
        shuffled = [ids[i] for i in order]
        out, start = {}, 0
        for name in SPLITS:
            out[name] = sorted(shuffled[start : start + counts[name]])
            start += counts[name]
    check_disjoint(out)
    return out


def _explicit(ids: list[str], lists: Mapping[str, list[str]], unavailable: set[str]) -> dict:
    listed = {cid for members in lists.values() for cid in members}
    missing = [c for c in ids if c not in listed]
    if missing:
        raise SplitError(
            f"split.cases does not assign {len(missing)} case(s): {', '.join(missing)}; "
            "list every case in train, val or test"
        )
    unknown = sorted(listed - set(ids) - unavailable)
    if unknown:
        raise SplitError(f"split.cases names case(s) not in the volumes: {', '.join(unknown)}")
    present = set(ids)
    return {s: sorted(c for c in lists.get(s, []) if c in present) for s in SPLITS}
