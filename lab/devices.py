"""The device a run computes on, its seeds and its precision: the one helper of each every script shares.

Not the paper (the workshop): --device auto picks cuda, then mps, then cpu, and nothing behaves
differently by device except speed; which precision a run computes in: bfloat16 autocast where the device
computes in it (the recipe's, lab/recipe.in_precision), float32 (--float32, the exact path) everywhere else.
"""

import random

import numpy as np
import torch

from data import DataError


def add_device_flag(parser) -> None:
    """The one --device flag of every script."""
    help = "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps (default: auto)"
    parser.add_argument("--device", default="auto", help=help)


def pick_device(name: str = "auto") -> torch.device:
    """--device auto: cuda, then mps, then cpu."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: expected auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DataError(f"--device {name}: CUDA is not available on this machine")
    if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise DataError(f"--device {name}: Apple's mps is not available on this machine")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def computes_bfloat16(device: torch.device) -> bool:
    """Whether the device computes in bfloat16 rather than emulating it: CUDA GPUs with bf16, CPUs with
    AVX512-BF16 or AMX. Elsewhere emulated bfloat16 is slower than float32."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def pick_precision(device: torch.device, float32: bool) -> str:
    """'bfloat16' (autocast) where the device computes in it, unless --float32 asks for the exact path."""
    return "bfloat16" if not float32 and computes_bfloat16(device) else "float32"


def precision_line(device: torch.device, precision: str) -> str:
    """The run's first lines say how it computes, and why."""
    if precision == "bfloat16":
        return f"precision: bfloat16 autocast ({device.type} computes in it; --float32 for the exact path)"
    why = "--float32" if computes_bfloat16(device) else f"this {device.type} does not compute in bfloat16"
    return f"precision: float32 ({why})"


def check_same_precision(saved: dict, made: dict, path) -> None:
    """A run resumes in the precision it ran in, or not at all: another one would give other numbers."""
    before, now = saved.get("precision", "float32"), made["precision"]
    if before != now:
        advice = "resume it on a device like the run's, with the run's --float32"
        raise DataError(f"--resume {path}: the run computed in {before}, this command would in {now}; {advice}")
