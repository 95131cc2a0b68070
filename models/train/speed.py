"""The trainer's speed switches: numeric precision and ``torch.compile``.

Both are settings of :class:`models.config.TrainConfig` (``precision``, ``compile``) and are
measured before/after by ``benchmarks/train_throughput.py --compare`` (docs/performance.md).

Precision. ``auto`` is what the trainer always did: bf16 autocast on CUDA (tensor cores), fp32
on a CPU. ``bf16`` asks for bf16 autocast on a CPU too, which pays only where the CPU has
native bf16 arithmetic (AVX512_BF16 or AMX, as oneDNN reports it): on a CPU without it oneDNN
emulates bf16 and a 128-px GVAE step was measured 11x slower than fp32, so there the run falls
back to fp32 with a warning naming the setting. bf16 autocast keeps weights, optimizer states
and the losses' reductions in fp32 (``models.base`` computes the likelihood and the KL in fp32).

Compile. ``torch.compile`` of every top-level network of a model (``nn.Module.compile``, in
place, so state-dict keys, checkpoints and optimizers see the same parameters). TorchInductor
cannot differentiate a compiled graph twice, so the WGAN-GP gradient penalty (a
``create_graph=True`` gradient, Gulrajani et al. 2017, eq. 3) runs the critic through
:func:`eager`, its uncompiled forward; everything else of the step is compiled. Inductor is
told to draw random numbers (dropout masks, the reparameterisation's noise) with ATen's own
kernels (``fallback_random``): its own generator was measured 1.8x slower per VAE step on a
2-core CPU, and with ATen's the compiled run draws the very numbers the eager one does, so the
two differ only by float rounding in fused kernels. A compiled run resumes bit-identically
with itself.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
from torch import nn

Amp = Callable[[], contextlib.AbstractContextManager]


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (CUDA with bf16, or a CPU oneDNN runs bf16
    on: AVX512_BF16 / AMX). Checked at run time, never assumed from the machine's name."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(
        torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    )


def resolve_precision(
    precision: str, device: torch.device, setting: str = "train.precision"
) -> str:
    """ "bf16" or "fp32": what ``precision`` (auto | fp32 | bf16) means on ``device``.

    ``auto``: bf16 on CUDA, fp32 on a CPU. ``bf16`` without native bf16 on the device warns,
    naming ``setting``, and gives fp32 (module docstring: emulated bf16 is an order slower).
    """
    if precision == "fp32":
        return "fp32"
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision != "bf16":
        raise ValueError(f"{setting} must be auto, fp32 or bf16, got {precision!r}")
    if native_bf16(device):
        return "bf16"
    warnings.warn(
        f"{setting}: bf16 asked for, but {device.type} has no native bf16 arithmetic "
        "(oneDNN reports none); training in fp32",
        RuntimeWarning,
        stacklevel=2,
    )
    return "fp32"


def autocast(precision: str, device: torch.device) -> Amp:
    """A factory of the forward pass's autocast context for a resolved precision."""
    if precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def compile_networks(model: nn.Module, backend: str = "inductor") -> list[str]:
    """``nn.Module.compile`` every direct child network of ``model`` in place; their names.

    Direct children (encoder, generator, critic, UNet, ...) rather than the model: the model's
    ``losses``/``critic_loss`` are methods, not ``forward``, and the gradient penalty needs the
    critic's eager forward (:func:`eager`). Children without parameters are left alone.
    """
    if backend == "inductor":
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True  # eager's random numbers (module docstring)
    names = []
    for name, child in model.named_children():
        if any(True for _ in child.parameters()):
            child.compile(backend=backend)
            names.append(name)
    return names


def eager(module: nn.Module) -> Callable[..., torch.Tensor]:
    """``module``'s uncompiled forward: a graph that is differentiated twice (the gradient
    penalty) must not pass through a compiled region. The plain ``forward`` bypasses what
    ``nn.Module.compile`` installed; no hooks are registered on these networks."""
    return module.forward
