"""Where a command or a training run computes: the device asked for, checked before any work, or the default.

    pick_device(None)      # "cuda" when torch sees a GPU, else "cpu"
    pick_device("cuda:1")  # refused in one line when this machine has fewer GPUs

torch's own words for a device it cannot use come from deep inside the first ``.to(device)`` ("Found no
NVIDIA driver…", "Torch not compiled with XPU enabled", "META device type not an accelerator"); these say
which setting to change.
"""
from __future__ import annotations

import torch


def pick_device(name: str | torch.device | None, what: str = "device") -> torch.device:
    """``name`` as a ``torch.device`` when this machine can compute there; None gives the GPU when there is one,
    else the CPU. ``what`` names the setting in the error (``"--device"`` for the command line)."""
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(f"{what} {name}: not a device name (cpu, cuda, cuda:1, mps, …)") from None
    leave_out = f"(leave {what} out to take the GPU when there is one, else the CPU)"
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {name}: this machine has no CUDA GPU that torch {torch.__version__} can use "
                         f"{leave_out}")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"{what} {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s), numbered from 0")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{what} {name}: Apple's MPS backend is not available here {leave_out}")
    if dev.type == "meta":
        raise ValueError(f"{what} {name}: a meta tensor holds no numbers; choose cpu, cuda or mps")
    backend = getattr(torch, dev.type, None)                        # torch.xpu, torch.mtia, …
    if dev.type not in ("cpu", "cuda", "mps") and not (hasattr(backend, "is_available") and backend.is_available()):
        raise ValueError(f"{what} {name}: torch {torch.__version__} cannot use {dev.type} devices on this machine "
                         f"{leave_out}")
    return dev
