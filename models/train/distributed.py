"""Data-parallel training for the one trainer: torch.distributed under ``torchrun``.

``gvae train`` launched by ``torchrun`` opens a process group (:func:`process_group`; NCCL for
CUDA tensors, gloo for CPU tensors) and :func:`models.train.trainer.train` runs every step on all
ranks through :class:`Distributed`. ``train.batch_size`` stays the GLOBAL batch: the seeded batch
sampler draws the same global indices on every rank and rank r keeps the r-th contiguous slice.

A run on R ranks computes what one process computes with the same global batch, up to float
summation order:

* Losses are batch means over equal shards, so the mean of the R shard losses is the global
  mean and the average of the R shard gradients is the global gradient
  (:meth:`Distributed.average_gradients`, one all-reduce per dtype after ``backward``).
  Why not DDP: DDP hooks every parameter of the module it wraps, while one model here has two
  optimisers over disjoint parameter sets that alternate, the trainer calls ``losses()`` rather
  than ``forward()``, and the WGAN-GP penalty differentiates with ``torch.autograd.grad``
  (create_graph=True), which DDP does not support.
* Batch norm (encoder/generator) normalises over the global batch: torch's ``SyncBatchNorm`` on
  CUDA, :class:`CPUSyncBatchNorm` on CPU, where torch's refuses to run.
* Random draws inside ``losses()``/``critic_loss()`` (reparameterisation noise, prior samples,
  penalty interpolation weights, diffusion timesteps, dropout masks) are drawn at GLOBAL size
  on every rank from the same generator state and sliced (:mod:`models.train.sharded_random`):
  shards
  get independent noise, not R copies of one draw, and on CPU exactly one process's numbers.

Only rank 0 touches the run folder (checkpoints, loss log, sample grids, summary): it decides
about resuming and broadcasts the checkpoint, so ranks on other nodes need no shared file
system, and the others wait at a barrier after each checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from models.train.sharded_random import ShardedRandom

T = TypeVar("T")


@contextlib.contextmanager
def process_group(env: dict[str, str] | None = None) -> Iterator[Distributed | None]:
    """Open the process group ``torchrun`` describes in the environment, close it on exit.

    Yields the rank's :class:`Distributed`, or None when ``WORLD_SIZE`` is unset or 1 (a plain
    single-process run; nothing is initialised). An already initialised group is used as is and
    left open. Ranks use ``cuda:LOCAL_RANK``; collectives on CUDA tensors go through NCCL, on
    CPU tensors through gloo (``MASTER_ADDR``/``MASTER_PORT``/``RANK`` come from torchrun).
    Open it once per process: gloo may hang reopening the default group in one torchrun launch.
    """
    env = os.environ if env is None else env
    world = int(env.get("WORLD_SIZE", "1"))
    if world < 2 or dist.is_initialized():
        yield current()
        return
    cuda = torch.cuda.is_available()
    if cuda:
        local_rank = int(env.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"LOCAL_RANK {local_rank} but {torch.cuda.device_count()} CUDA devices visible; "
                "torchrun --nproc-per-node must not exceed the GPUs of a node"
            )
        torch.cuda.set_device(local_rank)
    backend = "cpu:gloo,cuda:nccl" if cuda and dist.is_nccl_available() else "gloo"
    dist.init_process_group(backend)
    try:
        yield current()
    finally:
        dist.destroy_process_group()


def current() -> Distributed | None:
    """This process's :class:`Distributed` in an open group of 2+ ranks, else None."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return Distributed(rank=dist.get_rank(), world=dist.get_world_size())


def _grouped(tensors: Iterable[Tensor]) -> list[list[Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    return list(groups.values())


def _flat_collective(tensors: Iterable[Tensor], collective: Callable[[Tensor], Any]) -> None:
    """Run ``collective`` on one flat copy per dtype/device and copy the result back in place.

    One call per group instead of one per tensor; ``reshape``/``view_as`` keep logical order, so
    channels_last tensors round-trip unchanged in layout.
    """
    for group in _grouped(tensors):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        collective(flat)
        for t, chunk in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.detach().copy_(chunk.view_as(t))


@dataclass(frozen=True)
class Distributed:
    """One rank of a data-parallel run: its ``rank`` among ``world`` processes."""

    rank: int
    world: int

    def check_batch(self, batch_size: int) -> int:
        """The per-rank batch ``batch_size / world``; ValueError unless it divides evenly."""
        if batch_size % self.world:
            raise ValueError(
                f"train.batch_size {batch_size} is the global batch and must be a multiple of "
                f"the {self.world} processes (torchrun --nnodes x --nproc-per-node)"
            )
        return batch_size // self.world

    def shard(self, indices: Tensor) -> Tensor:
        """This rank's contiguous slice of a global batch's indices: (B,) -> (B / world,)."""
        b = self.check_batch(indices.shape[0])
        return indices[self.rank * b : (self.rank + 1) * b]

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        dist.barrier()

    def mean(self, values: Tensor) -> Tensor:
        """Element-wise mean over ranks of equal-sized shards' batch means: the global means."""
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Replace every ``.grad`` by its mean over ranks: the gradient of the global batch mean.

        Parameters without a gradient are left alone on every rank alike (the ranks run the
        same graph), as Adam skips them in a single process too.
        """

        def reduce(flat: Tensor) -> None:
            dist.all_reduce(flat)
            flat.div_(self.world)

        _flat_collective((p.grad for p in params if p.grad is not None), reduce)

    def broadcast_state(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module``."""
        _flat_collective(
            [*module.parameters(), *module.buffers()], lambda t: dist.broadcast(t, src=0)
        )

    def check_same(self, **values: str) -> None:
        """ValueError on every rank unless all ranks pass the same ``values`` (name -> text).

        Ranks that train different models, settings or data would otherwise run mismatched
        collectives and wait for each other forever.
        """
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, values)
        for name in values:
            seen = {rank: v[name] for rank, v in enumerate(gathered)}
            if len(set(seen.values())) > 1:
                raise ValueError(f"ranks disagree on {name.replace('_', ' ')}: {seen}")

    def sync_cuda_rng(self, device: torch.device) -> None:
        """Give every rank rank 0's CUDA generator state (after a resume; a no-op off CUDA).

        A checkpoint holds rank 0's process's view of every GPU's generator, which is current
        only for rank 0's own device; the other ranks' generators must continue from it too.
        """
        if device.type != "cuda":
            return
        box: list[Any] = [torch.cuda.get_rng_state(device) if self.rank == 0 else None]
        dist.broadcast_object_list(box, src=0)
        torch.cuda.set_rng_state(box[0], device)

    def on_main(self, fn: Callable[[], T]) -> T:
        """``fn()`` run on rank 0 only; every rank returns its result or raises its exception."""
        box: list[Any] = [None]
        if self.rank == 0:
            try:
                box[0] = (True, fn())
            except Exception as exc:  # re-raised on every rank, so no rank waits forever
                box[0] = (False, exc)
        dist.broadcast_object_list(box, src=0)
        ok, value = box[0]
        if not ok:
            raise value
        return value

    def prepare(self, model, cfg, device: torch.device, data_id: str) -> None:
        """Get ``model`` (a GenerativeModel already on ``device``) ready before the first step.

        Checks that ``cfg.batch_size`` divides over the ranks and that every rank trains the
        same model and settings (``cfg``, a TrainConfig) on the same data (``data_id``, the
        training tensor's fingerprint), synchronises batch norm in place (same parameter
        objects and state-dict keys) and copies rank 0's weights everywhere.
        """
        self.check_batch(cfg.batch_size)
        self.check_same(
            model=f"{model.name} {model.config.model_dump_json()} {model.channels}x{model.size}",
            train_settings=cfg.model_dump_json(),
            training_data_fingerprint=data_id,
        )
        sync_batchnorm(model, nn.SyncBatchNorm if device.type == "cuda" else CPUSyncBatchNorm)
        self.broadcast_state(model)

    def sharded_random(self, batch: int) -> ShardedRandom:
        """Context in which loss-side random draws are slices of global draws (module docstring)."""
        return ShardedRandom(batch, self.rank, self.world)


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of a sum over ranks is the sum of the ranks' gradients."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: D102
        x = x.clone()
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: D102
        grad = grad.clone()
        dist.all_reduce(grad)
        return grad


class CPUSyncBatchNorm(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch across ranks.

    torch's ``SyncBatchNorm`` runs only on accelerators; this is its CPU (gloo) counterpart.
    Two-pass statistics (sum, then squared deviations from the global mean) through a
    differentiable all-reduce, so each rank's backward carries every rank's loss through the
    shared mean and variance (Ioffe & Szegedy 2015, section 3, over the union of the shards).
    Outside a process group and in eval mode it is plain BatchNorm2d.
    """

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, C, H, W), normalised with the statistics of all ranks' batches."""
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.ndim)]
        shape = [1, -1] + [1] * (x.ndim - 2)
        count = x.new_tensor([x.numel() // x.shape[1]])
        sums = _AllReduceSum.apply(torch.cat([x.sum(dims), count]))  # (C + 1,)
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean.view(shape)
        var = _AllReduceSum.apply(centred.pow(2).sum(dims)) / n  # biased, as BatchNorm uses
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():  # running variance is unbiased, as in BatchNorm
                self.running_mean.mul_(1 - m).add_(mean.detach(), alpha=m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)), alpha=m)
        return y


def sync_batchnorm(module: nn.Module, cls: type[nn.modules.batchnorm._BatchNorm]) -> None:
    """Replace every BatchNorm2d inside ``module`` by ``cls``, in place.

    The new layers hold the very same parameter and buffer objects (optimisers built before
    stay valid; state-dict keys are unchanged) and the same train/eval flag.
    """
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.BatchNorm2d:
                continue
            new = cls(child.num_features, child.eps, child.momentum, child.affine)
            new.track_running_stats = child.track_running_stats
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var = child.running_mean, child.running_var
            new.num_batches_tracked = child.num_batches_tracked
            new.train(child.training)
            setattr(parent, name, new)
