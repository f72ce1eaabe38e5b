"""Checks for the exercises of notebook 05 (the U-Net)."""
from __future__ import annotations


import torch
import torch.nn.functional as F

from ..embedding import timestep_embedding
from ..unet import ResBlock
from .grading import Mistake, _generator, _grade, _same, _tensor, f64


def _embedding(t, dim, exponent=lambda i, h, d: -i / h, interleave=True, cos_first=False):
    h = dim // 2
    args = t.to(f64)[:, None] * 10_000.0 ** exponent(torch.arange(h, dtype=f64), h, dim)[None]
    first, second = (torch.cos(args), torch.sin(args)) if cos_first else (torch.sin(args), torch.cos(args))
    return torch.stack([first, second], dim=-1).reshape(len(t), dim) if interleave else torch.cat([first, second], 1)


def check_interleaved_embedding(fn, seed=None) -> bool:
    """Exercise 5.1: ``fn(t, dim)`` → (B, dim) with sin(ω_i t) at coordinate 2i and cos(ω_i t) at 2i + 1."""
    g = _generator(seed)
    cases = []
    for dim in (6, 16, 32, 64, 128):
        t = torch.randint(1, 1001, (8,), generator=g)
        t[0], t[-1] = 1, 1000
        cases.append((t, dim))

    def reference(t, dim):             # the library's [sin…, cos…] layout, columns interleaved
        h = dim // 2
        return timestep_embedding(t, dim)[:, torch.stack([torch.arange(h), torch.arange(h) + h], 1).flatten()]

    variant = lambda **kw: (lambda t, dim: _embedding(t, dim, **kw))
    mistakes = [
        Mistake("that is the library's layout [sin(ω_0 t) … sin(ω_{h−1} t), cos(ω_0 t) …]; interleave so that "
                "coordinate 2i is sin(ω_i t) and 2i + 1 is cos(ω_i t)", variant(interleave=False)),
        Mistake("sin and cos are swapped: coordinate 2i holds sin(ω_i t)", variant(cos_first=True)),
        Mistake("the frequencies are ω_i = P^(−i/h) with h = dim/2, and you divided by dim",
                variant(exponent=lambda i, h, d: -i / d)),
        Mistake("the exponent is negative: ω_i = P^(−i/h), frequencies fall from 1 to about 1/P",
                variant(exponent=lambda i, h, d: i / h)),
        Mistake("off by one in i: the frequencies start at ω_0 = 1 (i = 0, …, h − 1)",
                variant(exponent=lambda i, h, d: -(i + 1) / h)),
    ]

    def unit_pairs(fn):
        e = _tensor(fn(*cases[0]))
        if not _same(e[:, 0::2] ** 2 + e[:, 1::2] ** 2, torch.ones(8, 3, dtype=f64), (0, 1e-5)):
            return "each pair (sin(ω_i t), cos(ω_i t)) should have unit length"

    return _grade("interleaved_embedding", fn, cases, reference, mistakes, ("the embedding",), [unit_pairs],
                  "equals the library's embedding with its columns interleaved, for 5 widths and t = 1…1000",
                  tol=((0, 3e-4),))


def _resblock(block, x, temb, one_plus=True, swap=False, silu_temb=True, skip=True, add_after_norm=False,
              norm_first=True, dropout="in"):
    h = block.conv1(F.silu(block.norm1(x)) if norm_first else block.norm1(F.silu(x)))
    proj = block.time_proj(F.silu(temb) if silu_temb else temb)[:, :, None, None]
    if block.time_cond == "scale_shift":
        scale, shift = proj.chunk(2, dim=1)
        scale, shift = (shift, scale) if swap else (scale, shift)
        h = block.norm2(h) * ((1 + scale) if one_plus else scale) + shift
    else:
        h = block.norm2(h) + proj if add_after_norm else block.norm2(h + proj)
    h = F.silu(h)
    h = {"in": lambda: block.conv2(block.dropout(h)), "none": lambda: block.conv2(h),
         "after": lambda: block.dropout(block.conv2(h)),
         "always": lambda: block.conv2(F.dropout(h, block.dropout.p, training=True))}[dropout]()
    return h + block.skip(x) if skip else h


def check_resblock_forward(fn, seed=None) -> bool:
    """Exercise 5.2: ``fn(block, x, temb)`` → the forward pass of a library ``ResBlock`` (5.6), both time modes.

    Blocks are in training mode with dropout 0.25 (one more in eval mode, where dropout is off); the answer and
    the reference start from the same RNG state, so the dropout mask matches when block.dropout is applied where
    the lecture applies it.
    """
    g = _generator(seed)
    cases = []
    with torch.random.fork_rng(devices=[]):
        for time_cond, c_in, c_out, train in (("scale_shift", 8, 16, True), ("scale_shift", 16, 16, True),
                                              ("add", 8, 16, True), ("add", 16, 16, True), ("add", 8, 16, False)):
            torch.manual_seed(int(torch.randint(0, 2 ** 31, (1,), generator=g)))
            block = ResBlock(c_in, c_out, temb_dim=12, dropout=0.25, time_cond=time_cond).to(f64).train(train)
            with torch.no_grad():
                for p in block.parameters():       # non-trivial norms and a strong time signal
                    p.add_(0.3 * torch.randn(p.shape, dtype=f64))
            x, temb = torch.randn(3, c_in, 5, 5, generator=g, dtype=f64), torch.randn(3, 12, generator=g, dtype=f64)
            cases.append((block, x, temb, int(torch.randint(0, 2 ** 31, (1,), generator=g))))

    def seeded(forward):               # the same dropout masks for every candidate
        def call(block, x, temb, rng_seed):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(rng_seed)
                return forward(block, x, temb)
        return call

    variant = lambda **kw: seeded(lambda b, x, temb: _resblock(b, x, temb, **kw))
    mistakes = [
        Mistake("the scale enters as (1 + scale): h = norm2(h)·(1 + scale) + shift", variant(one_plus=False)),
        Mistake("the first half of time_proj's output is the scale, the second half the shift", variant(swap=True)),
        Mistake("the time embedding goes through SiLU before block.time_proj", variant(silu_temb=False)),
        Mistake("the residual path is missing: add block.skip(x) (a 1×1 conv when the channels change)",
                variant(skip=False)),
        Mistake("in 'add' mode the time bias is added before norm2: norm2(h + proj)", variant(add_after_norm=True)),
        Mistake("GroupNorm comes before SiLU: h = conv1(SiLU(norm1(x)))", variant(norm_first=False)),
        Mistake("block.dropout is missing (it sits between the second SiLU and conv2)", variant(dropout="none")),
        Mistake("dropout goes before conv2, not after it", variant(dropout="after")),
        Mistake("F.dropout(h, p) drops in eval mode too: apply block.dropout, which block.eval() turns off",
                variant(dropout="always")),
    ]
    return _grade("resblock_forward", seeded(fn), cases, seeded(lambda b, x, temb: b(x, temb)), mistakes,
                  ("the output",), (),
                  "matches ResBlock.forward for both time conditionings, with and without the 1×1 skip, dropout on "
                  "and off (eval mode)",
                  tol=((1e-6, 1e-8),))
