"""Random draws of a data-parallel rank that are slices of what one process would draw.

Under :class:`ShardedRandom` (active around ``losses()``/``critic_loss()`` on every rank, see
:mod:`models.train.distributed`), a per-sample random tensor is drawn at GLOBAL size from the
rank's generator and the rank keeps its rows. All ranks' generators stay in step with one
process's, the shards get independent noise (not R copies of one draw), and on CPU every number
is the one a single process with the global batch draws (tests/test_ddp.py checks it bit for
bit). On CUDA the dropout masks are equally distributed but not identical, as torch fuses a
different kernel there.

The contract a model keeps: inside its losses, a random tensor whose first dimension is k
times the batch holds k stacked blocks of per-sample noise (what ``torch.cat([a, b])`` of two
batch-sized draws gives); any other first dimension is shared by all samples. Random functions
that cannot be sliced this way raise ``NotImplementedError`` rather than draw the same noise on
every rank.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.overrides import TorchFunctionMode


def _memory_format(like: Tensor) -> torch.memory_format:
    # The global draw must be laid out as the single process's would be: the generator fills
    # memory in order, so NCHW and NHWC tensors hold the same numbers at different positions.
    if (
        like.ndim == 4
        and not like.is_contiguous()
        and like.is_contiguous(memory_format=torch.channels_last)
    ):
        return torch.channels_last
    return torch.contiguous_format


def _size(args: tuple, kwargs: dict) -> tuple[int, ...]:
    if "size" in kwargs:
        return tuple(kwargs.pop("size"))
    if len(args) == 1 and isinstance(args[0], (tuple, list, torch.Size)):
        return tuple(args[0])
    return tuple(args)


# Random functions ShardedRandom cannot slice; under it they raise instead of drawing noise that
# would be identical on every rank.
_UNSHARDABLE = {
    torch.normal,
    torch.bernoulli,
    torch.randint_like,
    torch.randperm,
    torch.multinomial,
    torch.poisson,
    torch.Tensor.normal_,
    torch.Tensor.uniform_,
    torch.Tensor.bernoulli_,
    torch.Tensor.random_,
    torch.Tensor.exponential_,
    torch.Tensor.geometric_,
    torch.Tensor.cauchy_,
    torch.Tensor.log_normal_,
    F.dropout1d,
    F.dropout2d,
    F.dropout3d,
    F.alpha_dropout,
    F.feature_alpha_dropout,
    F.gumbel_softmax,
    F.rrelu,
    torch.dropout,
    torch.native_dropout,
    torch.feature_dropout,
    torch.alpha_dropout,
    torch.feature_alpha_dropout,
}


class ShardedRandom(TorchFunctionMode):
    """Make this rank's random draws slices of the draws one process would make (module doc).

    ``batch`` is this rank's batch b. A draw of first dimension k * b (``torch.randn``,
    ``rand``, ``randint``, ``randn_like``, ``rand_like``, ``F.dropout`` masks) is drawn as
    (k * world * b, ...) from the same generator; rank r keeps rows [j*world*b + r*b,
    j*world*b + (r+1)*b) of each block j. Other first dimensions draw as usual (the same numbers
    on every rank).
    """

    def __init__(self, batch: int, rank: int, world: int) -> None:
        super().__init__()
        if batch < 1 or not 0 <= rank < world:
            raise ValueError(f"need batch >= 1 and 0 <= rank < world, got {batch}, {rank}, {world}")
        self.batch, self.rank, self.world = batch, rank, world

    def _blocks(self, size: tuple[int, ...]) -> int | None:
        if not size or size[0] < 1 or size[0] % self.batch:
            return None
        return size[0] // self.batch

    def _mine(self, glob: Tensor, k: int) -> Tensor:
        """This rank's rows of a global draw (k * world * b, ...) -> (k * b, ...)."""
        b, w, r = self.batch, self.world, self.rank
        parts = [glob[(j * w + r) * b : (j * w + r + 1) * b] for j in range(k)]
        return parts[0] if k == 1 else torch.cat(parts)  # cat keeps the memory format

    def _global(self, size, k: int, fill: str, generator, fmt, lo=0, hi=1, **options) -> Tensor:
        glob = torch.empty((k * self.world * self.batch, *size[1:]), memory_format=fmt, **options)
        # What torch.randn/rand/randint(_like) do: empty (the like's layout), then fill in place.
        getattr(glob, fill)(lo, hi, generator=generator)
        return self._mine(glob, k)

    def _randint(self, func, args: tuple, kwargs: dict) -> Tensor:
        kw = dict(kwargs)
        if "size" in kw:
            bounds, size = list(args), tuple(kw.pop("size"))
        else:
            bounds, size = list(args[:-1]), tuple(args[-1])
        lo = kw.pop("low", bounds.pop(0) if len(bounds) == 2 else 0)
        hi = kw.pop("high", bounds.pop(0) if bounds else None)
        generator = kw.pop("generator", None)
        options = {"dtype": kw.pop("dtype", None) or torch.int64, "device": kw.pop("device", None)}
        k = self._blocks(size)
        if (
            k is None
            or hi is None
            or kw.pop("layout", torch.strided) != torch.strided
            or any(kw.values())
        ):
            return func(*args, **kwargs)
        fmt = torch.contiguous_format
        return self._global(size, k, "random_", generator, fmt, lo=lo, hi=hi, **options)

    def _factory(self, func, fill: str, args: tuple, kwargs: dict) -> Tensor:
        kw = dict(kwargs)
        size = _size(args, kw)
        generator = kw.pop("generator", None)
        requires_grad = kw.pop("requires_grad", False)
        options = {"dtype": kw.pop("dtype", None), "device": kw.pop("device", None)}
        k = self._blocks(size)
        if k is None or kw.pop("layout", torch.strided) != torch.strided or any(kw.values()):
            return func(*args, **kwargs)
        out = self._global(size, k, fill, generator, torch.contiguous_format, **options)
        return out.requires_grad_(requires_grad)

    def _like(self, func, fill: str, args: tuple, kwargs: dict) -> Tensor:
        kw = dict(kwargs)
        like = args[0] if args else kw.pop("input")
        fmt = kw.pop("memory_format", torch.preserve_format)
        requires_grad = kw.pop("requires_grad", False)
        options = {
            "dtype": kw.pop("dtype", None) or like.dtype,
            "device": kw.pop("device", None) or like.device,
        }
        k = self._blocks(tuple(like.shape))
        if k is None or kw.pop("layout", None) not in (None, torch.strided) or any(kw.values()):
            return func(*args, **kwargs)
        fmt = _memory_format(like) if fmt == torch.preserve_format else fmt
        return self._global(like.shape, k, fill, None, fmt, **options).requires_grad_(requires_grad)

    def _dropout(
        self, input: Tensor, p: float = 0.5, training: bool = True, inplace: bool = False
    ) -> Tensor:
        k = self._blocks(tuple(input.shape)) if input.ndim else None
        if not training or not 0 < p < 1 or k is None:
            return F.dropout(input, p, training, inplace)  # draws nothing, or not per sample
        if inplace:
            raise NotImplementedError("in-place dropout cannot be sharded across ranks")
        glob = torch.empty(
            (k * self.world * self.batch, *input.shape[1:]),
            dtype=input.dtype,
            device=input.device,
            memory_format=_memory_format(input),
        )
        # ATen's CPU dropout: noise = bernoulli(1 - p) / (1 - p); out = input * noise. On CUDA
        # torch fuses another kernel; the masks there are equally distributed, not identical.
        noise = glob.bernoulli_(1 - p).div_(1 - p)
        return input * self._mine(noise, k)

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: D105
        kwargs = kwargs or {}
        if func is torch.randn:
            return self._factory(func, "normal_", args, kwargs)
        if func is torch.rand:
            return self._factory(func, "uniform_", args, kwargs)
        if func is torch.randn_like:
            return self._like(func, "normal_", args, kwargs)
        if func is torch.rand_like:
            return self._like(func, "uniform_", args, kwargs)
        if func is torch.randint:
            return self._randint(func, args, kwargs)
        if func is F.dropout:
            return self._dropout(*args, **kwargs)
        if func in _UNSHARDABLE:
            name = getattr(func, "__qualname__", repr(func))
            raise NotImplementedError(
                f"{name} inside losses() cannot be sharded across ranks; draw with torch.randn, "
                "rand, randint, randn_like, rand_like or F.dropout (models.train.sharded_random)"
            )
        return func(*args, **kwargs)
