"""2D pancreas segmentation: MONAI UNet, classical augmentation, training loop, metrics.

Pure cores (arrays in, arrays/models out); the experiment grid and all file I/O live in
``pipeline.augment.segment.experiment``. The network is ``monai.networks.nets.UNet`` (Ronneberger
et al.
2015, with residual units of Kerfoot et al. 2018) trained with ``DiceCELoss``; metrics are
MONAI's ``DiceMetric`` and ``compute_hausdorff_distance``.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric, compute_hausdorff_distance
from monai.networks.nets import UNet
from monai.transforms import (
    Compose,
    Rand2DElasticd,
    RandAffined,
    RandFlipd,
    RandScaleIntensityd,
    RandShiftIntensityd,
)

from models.train.speed import autocast, resolve_precision
from models.train.trainer import resolve_device
from pipeline.augment.segment.batched_augment import BatchedClassical, grid_scale_range
from pipeline.params.segment import ClassicalAugmentParams, SegmentParams, UNetParams


def build_unet(cfg: UNetParams) -> UNet:
    """Return a 2D ``monai.networks.nets.UNet`` with one input (CT) and one output (logit)."""
    return UNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=cfg.channels,
        strides=cfg.strides,
        num_res_units=cfg.num_res_units,
    )


def classical_augmentation(
    cfg: ClassicalAugmentParams, seed: int, backend: str = "monai"
) -> Compose | BatchedClassical:
    """Return the seeded augmentation applied jointly to ``image`` and ``mask``.

    ``backend`` ``monai`` is the MONAI dictionary pipeline described below, one sample at a
    time; ``batched`` its torch re-implementation for whole sub-batches with the same
    distributions (``pipeline.augment.segment.batched_augment``).

    Each item is ``{"image": (1, S, S) float, "mask": (1, S, S) float}``. Rotation, zoom and
    the elastic deformation are drawn together by one ``Rand2DElasticd`` (``RandAffined`` when
    ``elastic`` is off): one resampling instead of three, so the image is not blurred three
    times over and the transform costs ~2 ms instead of ~10 ms per 64 px sample on a CPU. The
    mask is resampled with nearest interpolation (it stays in {0, 1}) and padded with zeros;
    the image is padded with its border values, so no artificial mid-grey frame appears.
    Intensity jitter touches the image only.
    """
    if backend == "batched":
        return BatchedClassical(cfg, seed)
    if backend != "monai":
        raise ValueError(f"unknown augmentation backend '{backend}' (monai, batched)")
    keys = ("image", "mask")
    geometry = {
        "prob": cfg.prob,
        "rotate_range": math.radians(cfg.rotate_deg),
        # MONAI scales the sampling grid: a grid scale of 1/z shows the content zoomed by z.
        "scale_range": grid_scale_range(cfg.zoom),
        "mode": ("bilinear", "nearest"),
        "padding_mode": ("border", "zeros"),
    }
    if cfg.elastic:
        warp = Rand2DElasticd(
            keys,
            spacing=cfg.elastic_spacing_px,
            magnitude_range=cfg.elastic_magnitude,
            **geometry,
        )
    else:
        warp = RandAffined(keys, **geometry)
    pipeline = Compose(
        [
            # spatial_axis=1 of (row, col): the columns run patient right -> left.
            RandFlipd(keys, prob=cfg.flip_prob, spatial_axis=1),
            warp,
            RandScaleIntensityd("image", factors=cfg.intensity_scale, prob=cfg.prob),
            RandShiftIntensityd("image", offsets=cfg.intensity_shift, prob=cfg.prob),
        ]
    )
    pipeline.set_random_state(seed=seed)
    return pipeline


def batch_indices(n: int, batch_size: int, seed: int | list[int]) -> Iterator[np.ndarray]:
    """Yield batches of sample indices forever: seeded epochs, each a fresh permutation.

    Every sample is seen once per epoch, so a run of ``steps`` steps is reproducible and its
    batch order depends only on ``seed``. Batches never straddle two epochs' duplicates unless
    ``batch_size > n``, in which case indices repeat within a batch.
    """
    if n < 1:
        raise ValueError("no training samples")
    rng = np.random.default_rng(seed)
    pool = np.zeros(0, np.int64)
    while True:
        while len(pool) < batch_size:
            pool = np.concatenate([pool, rng.permutation(n)])
        yield pool[:batch_size]
        pool = pool[batch_size:]


def augment_batch(
    pipe: Compose | BatchedClassical,
    image: np.ndarray,
    mask: np.ndarray,
    flags: np.ndarray,
    device: torch.device | None = None,
):
    """Apply ``pipe`` to the flagged samples of one ``(B, 1, S, S)`` batch.

    Returns float32 tensors ``(image, mask)`` on ``device`` (the CPU when None); the inputs
    are not modified. Images are clipped back to [-1, 1] (a CT window saturates; intensity
    jitter must not leave its range) and masks are re-binarised. A ``BatchedClassical`` runs
    on ``device`` with the caller's threads; MONAI's pipeline on the CPU, sample by sample.
    """
    img = torch.from_numpy(image.astype(np.float32))  # astype copies: inputs stay untouched
    msk = torch.from_numpy(mask.astype(np.float32))
    rows = np.flatnonzero(flags)
    if isinstance(pipe, BatchedClassical):
        img, msk = img.to(device or "cpu"), msk.to(device or "cpu")
        if len(rows):
            at = torch.from_numpy(rows).to(img.device)
            out_img, out_msk = pipe(img[at], msk[at])
            img[at], msk[at] = out_img.clamp(-1.0, 1.0), (out_msk > 0.5).float()
        return img, msk
    if len(rows):
        _monai_rows(pipe, img, msk, rows)
    return img.to(device or "cpu"), msk.to(device or "cpu")


def _monai_rows(pipe: Compose, img: torch.Tensor, msk: torch.Tensor, rows: np.ndarray) -> None:
    """Run MONAI's pipeline on ``img[i], msk[i]`` for every ``i`` in ``rows``, in place."""
    # MetaTensor bookkeeping costs ~3x the resampling itself at 64 px; nothing here needs it.
    # One thread: per-sample 64 px ops lose more to thread synchronisation than they gain
    # (measured: 600 augmented steps 52 s with 1 thread, 59 s with 2, on two CPU cores).
    tracking, threads = get_track_meta(), torch.get_num_threads()
    set_track_meta(False)
    torch.set_num_threads(1)
    try:
        for i in rows:
            out = pipe({"image": img[i], "mask": msk[i]})
            img[i] = torch.as_tensor(out["image"]).clamp(-1.0, 1.0)
            msk[i] = (torch.as_tensor(out["mask"]) > 0.5).float()
    finally:
        set_track_meta(tracking)
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class TrainResult:
    """A trained network, what it cost, and the optimizer steps of each phase."""

    model: torch.nn.Module
    final_loss: float
    seconds: float
    phase_steps: tuple[int, ...] = ()


@dataclass(frozen=True)
class Phase:
    """A stretch of training on one set of samples.

    ``augment`` (bool ``(N,)``) flags the samples that get the classical augmentation;
    ``mixer`` (``pipeline.augment.segment.mixing.Mixer``), when given, is called as
    ``mixer(idx, image, mask)`` on every batch before that augmentation.
    """

    name: str
    image: np.ndarray
    mask: np.ndarray
    augment: np.ndarray
    steps: int
    mixer: Callable | None = None


def train_segmenter(
    image: np.ndarray,
    mask: np.ndarray,
    augment: np.ndarray,
    params: SegmentParams,
    seed: int,
    mixer: Callable | None = None,
) -> TrainResult:
    """Train a UNet for ``params.steps`` Adam steps on ``(N, 1, S, S)`` images and masks.

    ``augment`` is a bool ``(N,)``: which samples get the classical augmentation; ``mixer`` an
    optional CarveMix/CutMix applied before it. One phase of :func:`train_phases`.
    """
    return train_phases([Phase("train", image, mask, augment, params.steps, mixer)], params, seed)


def build_network(params: SegmentParams, device: torch.device) -> tuple[UNet, Callable]:
    """Return ``(model, forward)``: the UNet on ``device`` and what a training step calls.

    ``segment.channels_last`` stores the weights NHWC (batches are made NHWC to match);
    ``segment.compile`` makes ``forward`` ``torch.compile(model)``, which shares the
    parameters, so the returned ``model`` is the trained network either way.
    """
    model = build_unet(params.unet).to(device)
    if params.channels_last:
        model = model.to(memory_format=torch.channels_last)
    # Static shapes: a grid's runs share one batch shape. A second shape in one process (the
    # benchmark's sizes) then compiles a second static graph; dynamic shapes would instead try
    # a symbolic graph, which inductor 2.13 fails to lay out in channels_last.
    return model, (torch.compile(model, dynamic=False) if params.compile else model)


# Adam's multi-tensor (foreach) update instead of its default Python loop over the ~40 small
# tensors on a CPU (CUDA defaults to foreach): the same arithmetic per element, so the same
# weights bit for bit (tests/test_segment_switches.py), and ~10 ms less per step on two cores.
# benchmarks/segment_throughput.py turns it off to time the code path before it.
ADAM_FOREACH = True


def build_optimizer(model: torch.nn.Module, params: SegmentParams) -> torch.optim.Adam:
    """Adam with ``segment.lr`` and ``segment.weight_decay`` over ``model``'s parameters."""
    return torch.optim.Adam(
        model.parameters(), lr=params.lr, weight_decay=params.weight_decay, foreach=ADAM_FOREACH
    )


def train_phases(phases: Sequence[Phase], params: SegmentParams, seed: int) -> TrainResult:
    """Train one UNet through ``phases`` in order, one optimizer for all of them.

    ``seed`` fixes the initial weights, the batch order and the augmentation draws. The loss is
    ``DiceCELoss(sigmoid=True, batch=True)``: with ``batch=True`` Dice is pooled over the whole
    batch, so the ~0.5%-of-a-slice pancreas and pancreas-free slices do not pull the soft Dice
    of each sample towards an all-background optimum (Milletari et al. 2016, eq. 1, summed
    over the batch). One Adam and one learning-rate schedule span the phases: a ``pretrain``
    run differs from a ``mix`` run in the order of what it sees, not in its optimizer. The
    forward pass runs in the autocast ``segment.precision`` resolves to
    (:func:`models.train.speed.resolve_precision`: bf16 on CUDA by default).
    Returns the network (eval mode), the last loss, the seconds and the steps per phase.
    """
    for ph in phases:
        if len(ph.image) != len(ph.mask) or len(ph.image) != len(ph.augment):
            raise ValueError(f"phase {ph.name}: image, mask and augment differ in length")
    device = resolve_device(params.device)  # the generators' rule: one device policy
    if params.threads is not None:
        # Also on CUDA: the per-sample augmentation runs on the CPU, and tiny ops on many
        # threads cost more in synchronisation than they gain.
        torch.set_num_threads(params.threads)
    amp = autocast(resolve_precision(params.precision, device, "segment.precision"), device)
    torch.manual_seed(seed)
    model, forward = build_network(params, device)
    opt = build_optimizer(model, params)
    total = sum(ph.steps for ph in phases)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
        if params.schedule == "cosine"
        else None
    )
    loss_fn = DiceCELoss(sigmoid=True, batch=True)
    pipe = classical_augmentation(params.augment, seed, params.augment_backend)
    layout = torch.channels_last if params.channels_last else torch.contiguous_format
    start = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    done = []
    for k, ph in enumerate(phases):
        # The first phase's batch order is the single-phase one, so a one-phase run is the
        # run this function made before phases existed (same seed, same weights).
        batches = batch_indices(len(ph.image), params.batch_size, seed if k == 0 else [seed, k])
        for _ in range(ph.steps):
            idx = next(batches)
            img_np, msk_np = ph.image[idx], ph.mask[idx]
            if ph.mixer is not None:
                img_np, msk_np = ph.mixer(idx, img_np, msk_np)
            img, msk = augment_batch(pipe, img_np, msk_np, ph.augment[idx], device)
            with amp():
                logits = forward(img.contiguous(memory_format=layout))  # (B, 1, S, S)
            loss = loss_fn(logits.float(), msk)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
        done.append(ph.steps)
    # Read once at the end: a float() per step would make CUDA wait for every step.
    final = float(loss.detach())
    seconds = time.perf_counter() - start
    model.eval()
    return TrainResult(model, final, seconds, tuple(done))


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Return uint8 ``(N, 1, S, S)`` masks: ``sigmoid(logit) > 0.5``, i.e. ``logit > 0``."""
    device = next(model.parameters()).device
    model.eval()
    out = np.zeros(image.shape, np.uint8)
    for lo in range(0, len(image), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(image[lo : lo + batch_size])).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(x.float())
        out[lo : lo + batch_size] = (torch.sigmoid(logits.float()) > 0.5).cpu().numpy()
    return out


def patient_dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of one patient, pooled over its slices: ``2 sum|P & G| / (sum|P| + sum|G|)``.

    ``pred`` and ``gt`` are binary ``(n, 1, S, S)`` (or ``(n, S, S)``) stacks of one patient's
    evaluated slices, treated as one volume by ``DiceMetric``. Empty ground truth and empty
    prediction count as 1 (nothing to find, nothing found); empty ground truth with any
    predicted pixel counts as 0 (MONAI's ``ignore_empty=False``).
    """
    p = torch.as_tensor(np.asarray(pred).reshape(1, 1, len(pred), *pred.shape[-2:]) > 0)
    g = torch.as_tensor(np.asarray(gt).reshape(1, 1, len(gt), *gt.shape[-2:]) > 0)
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(gt.shape)} differ")
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    return float(metric(p.float(), g.float())[0, 0])


def slice_dice(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Dice of every slice, float64 ``(N,)``: ``2|P & G| / (|P| + |G|)`` per ``(1, S, S)`` slice.

    The conventions of :func:`patient_dice` per slice: both empty is 1, an empty mask with any
    predicted pixel is 0.
    """
    p = np.asarray(pred).reshape(len(pred), -1) > 0
    g = np.asarray(gt).reshape(len(gt), -1) > 0
    if p.shape != g.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and mask {tuple(gt.shape)} differ")
    inter = (p & g).sum(1).astype(np.float64)
    denom = (p.sum(1) + g.sum(1)).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * inter / denom, 1.0)


def patient_hd95(pred: np.ndarray, gt: np.ndarray, pixel_mm: float) -> float:
    """Mean over one patient's slices of the 95th-percentile Hausdorff distance, in mm.

    Only slices where both ground truth and prediction are non-empty have a defined distance
    (Huttenlocher et al. 1993; percentile as in the Medical Segmentation Decathlon); the mean
    is over those, NaN when there is none. ``pixel_mm`` is the isotropic in-plane pixel size.
    """
    p = np.asarray(pred).reshape(len(pred), -1, *pred.shape[-2:]) > 0
    g = np.asarray(gt).reshape(len(gt), -1, *gt.shape[-2:]) > 0
    both = p.reshape(len(p), -1).any(1) & g.reshape(len(g), -1).any(1)
    if not both.any():
        return float("nan")
    with warnings.catch_warnings():
        # MONAI 1.5+ warns about an argument it passes to itself internally.
        warnings.simplefilter("ignore", FutureWarning)
        hd = compute_hausdorff_distance(
            torch.as_tensor(p[both]).float(),  # (n, 1, S, S): batch of slices, one channel
            torch.as_tensor(g[both]).float(),
            include_background=True,
            percentile=95,
            spacing=float(pixel_mm),
        )
    return float(hd.mean())


def evaluate_patients(
    pred: np.ndarray, gt: np.ndarray, case_id: np.ndarray, pixel_mm: float
) -> dict[str, dict[str, float]]:
    """Return ``{case_id: {"dice", "hd95", "slices"}}`` for every patient in ``case_id``."""
    case_id = np.asarray(case_id)
    out: dict[str, dict[str, float]] = {}
    for cid in sorted(set(case_id.tolist())):
        sel = case_id == cid
        out[cid] = {
            "dice": patient_dice(pred[sel], gt[sel]),
            "hd95": patient_hd95(pred[sel], gt[sel], pixel_mm),
            "slices": int(sel.sum()),
        }
    return out
