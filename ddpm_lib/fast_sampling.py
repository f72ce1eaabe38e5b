"""Fast sampling: the same samplers with a compiled ε-model at one static batch shape, on a GPU replayed
as a CUDA graph.

    eps = compiled_eps_model(ema_model, (256, 3, 32, 32), amp_dtype=torch.bfloat16)   # compiles, warms up
    x0 = sample_ddim(eps, schedule, (256, 3, 32, 32), steps=50, generator=g)          # unchanged sampler

A sampler's loop calls ε_θ(x_t, t) once per step at the same shape; between calls it does only a few
elementwise operations. On a GPU part of each call's time goes to Python and to launching hundreds of
small kernels (most of it for a small network or batch), which a CUDA graph removes: it records the
kernels of one call once and then replays them with a single launch.
``compiled_eps_model`` wraps the network in ``torch.compile(mode="reduce-overhead", dynamic=False)``:
Inductor fuses the network's kernels for the one input shape and, on CUDA, records them as a graph
(PyTorch's "CUDA graph trees"), copying each call's inputs into the graph's static buffers.

Only the network is compiled; ``sample_ddpm`` and ``sample_ddim`` run as they are, so every draw of
noise still comes from the caller's generator in the same order and the samples equal those of the
eager network for the same seed, up to floating-point rounding (the compiled kernels add in another
order). On a CPU there is no CUDA graph: the same call compiles the network only.
"""
from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

BACKENDS = ("inductor", "aot_eager", "eager")


class CompiledEps:
    """A callable ``eps(xt, t)`` with the signature ``sample_ddpm`` and ``sample_ddim`` expect, running a
    compiled network at the one batch shape it was built for (see ``compiled_eps_model``).

    Attributes: ``batch_shape``; ``cuda_graphs`` (True when calls replay CUDA graphs: asked for, on
    CUDA, and Inductor skipped none during the warm-up); ``compile_seconds`` (wall time of the warm-up
    calls: compilation and graph recording).
    """

    def __init__(self, model: nn.Module, batch_shape, device, cuda_graphs: bool, amp_dtype, backend: str,
                 warmup: int, autotune: bool = False):
        self.batch_shape = tuple(batch_shape)
        self.device = torch.device(device)
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda" and backend == "inductor"
        autocast = (lambda: torch.autocast(self.device.type, dtype=amp_dtype)) if amp_dtype is not None \
            else contextlib.nullcontext

        def forward(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            with autocast():
                return model(xt, t)

        # The same call on every device: Inductor skips CUDA graphs by itself for CPU tensors.
        if backend != "inductor":
            mode = None
        elif autotune:
            mode = "max-autotune" if cuda_graphs else "max-autotune-no-cudagraphs"
        else:
            mode = "reduce-overhead" if cuda_graphs else None
        self._forward = torch.compile(forward, backend=backend, mode=mode, dynamic=False)
        from torch._dynamo.utils import counters        # here: importing dynamo takes a while
        start, skips = time.perf_counter(), counters["inductor"]["cudagraph_skips"]
        xt = torch.randn(self.batch_shape, device=self.device)
        t = torch.ones(self.batch_shape[0], dtype=torch.long, device=self.device)
        for _ in range(warmup):       # graph trees record on the second call and replay from the third
            self(xt, t)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.compile_seconds = time.perf_counter() - start
        # Inductor falls back to plain kernels (and says why in a warning) when a graph cannot be recorded.
        self.cuda_graphs = self.cuda_graphs and counters["inductor"]["cudagraph_skips"] == skips

    def __call__(self, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        B, b = self.batch_shape[0], len(xt) if xt.dim() else 0
        if tuple(xt.shape[1:]) != self.batch_shape[1:] or not 1 <= b <= B:
            raise ValueError(f"this compiled ε-model runs at the static batch shape {self.batch_shape} (fewer "
                             f"samples are padded to it), got x_t of shape {tuple(xt.shape)}: build one per shape")
        if t.shape != (b,):
            raise ValueError(f"t must be a long tensor of shape ({b},), got {tuple(t.shape)}")
        if b < B:    # e.g. a last, smaller batch: in eval mode each sample's ε depends on that sample alone
            xt = torch.cat([xt, xt.new_zeros((B - b, *self.batch_shape[1:]))])
            t = torch.cat([t, t.new_ones(B - b)])
        with torch.no_grad():
            if self.cuda_graphs:
                torch.compiler.cudagraph_mark_step_begin()     # each call is a new graph replay
            # The graph's output lives in its static memory and the next replay overwrites it: copy it,
            # in the standard layout (a channels_last network's output would change the sampler's x_t
            # layout, and a new input layout means compiling again).
            return self._forward(xt.contiguous(), t)[:b].clone(memory_format=torch.contiguous_format)


def compiled_eps_model(model: nn.Module, batch_shape, device=None, cuda_graphs: bool = True,
                       amp_dtype: torch.dtype | None = None, backend: str = "inductor",
                       warmup: int = 3, autotune: bool = False) -> CompiledEps:
    """``model`` compiled for sampling at the static ``batch_shape``; returns ``eps(xt, t)`` for the samplers.

    model: an ε-model in eval mode (``model(xt, t)`` with the paper's t ∈ 1..T), e.g. θ_ema. It is
    not changed; its parameters are read at every call, so later in-place updates (EMA) are seen.
    batch_shape: (B, C, H, W) (or (B, D) for points): the x_t shape the result runs at; a call with
    fewer samples (b, C, H, W), b < B, is padded to it and returns the b samples' ε (a network in eval
    mode sees each sample alone: GroupNorm and attention work within a sample).
    device: where the inputs live (default: the model's parameters' device).
    cuda_graphs: on CUDA, replay the network as a CUDA graph (``torch.compile`` mode
    "reduce-overhead"); on a CPU it changes nothing.
    amp_dtype: run the network under ``torch.autocast`` with this dtype (e.g. ``torch.bfloat16`` on a
    GPU); its output then has that dtype, which the samplers cast back to x_t's.
    backend: ``torch.compile``'s backend: "inductor" (the real compiler), or "aot_eager" / "eager",
    which trace the same graph without generating code (fast; for tests and debugging).
    warmup: calls made now, on random inputs, so that compiling and graph recording happen here and
    not inside a timed sampler; ``.compile_seconds`` reports how long they took.
    autotune: Inductor's "max-autotune" modes (with or without CUDA graphs as ``cuda_graphs`` says):
    it times candidate kernels for every matrix product and convolution while compiling; minutes
    of compilation for a few per cent, sometimes more, on a GPU.

    Every call checks the shape and returns a fresh tensor; gradients are never recorded.
    """
    if model.training:
        raise ValueError("compile the ε-model for sampling in eval mode (model.eval()): dropout would make "
                         "its outputs random and differ from the eager sampler's")
    if backend not in BACKENDS:
        raise ValueError(f"unknown torch.compile backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if len(tuple(batch_shape)) < 2 or min(batch_shape) < 1:
        raise ValueError(f"batch_shape must be (B, ...) with positive sizes, got {tuple(batch_shape)}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be a whole number of calls >= 0, got {warmup!r}")
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    return CompiledEps(model, batch_shape, device, cuda_graphs, amp_dtype, backend, warmup, autotune)
