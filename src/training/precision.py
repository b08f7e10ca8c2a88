"""Training precision and memory format, resolved once per device (plain and fast path alike).

``train.precision``: ``32`` / ``32-true`` (fp32), ``bf16-mixed`` (bf16 autocast, fp32 weights and
optimiser), or ``auto``: bf16 where the device computes it natively (a CUDA GPU with bf16, a CPU with
AMX or AVX512-BF16), fp32 elsewhere. On an AVX2-only CPU oneDNN emulates bf16 and a step is several
times slower than fp32, which is why ``auto`` looks at the CPU. Other Lightning names (``16-mixed``,
``64-true``, ...) pass through to the plain path unchanged.

``train.channels_last``: ``true`` | ``false`` | ``auto`` (= on CUDA only, the fast path's old default).

Either way the model that leaves training is fp32 in the contiguous (NCHW) format, so scores,
attacks and quantizers never see a difference other than the trained weights themselves.
"""
from __future__ import annotations

import contextlib
import functools
import os

import torch

FP32, BF16 = "32-true", "bf16-mixed"
_ALIASES = {"32": FP32, "32-true": FP32, "bf16-mixed": BF16}
PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
# oneDNN ISA caps (ONEDNN_MAX_CPU_ISA) below which bf16 is emulated
_EMULATED_ISA = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI")


def _cpuinfo_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


@functools.lru_cache(maxsize=None)
def native_bf16_cpu() -> bool:
    """The CPU has bf16 dot-product instructions (AMX-BF16 or AVX512-BF16) and oneDNN may use them."""
    cpu = getattr(torch, "cpu", None)
    try:
        native = bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())
    except AttributeError:
        native = bool({"amx_bf16", "avx512_bf16"} & _cpuinfo_flags())
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() in _EMULATED_ISA:
        return False
    try:
        return native and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return native and torch.backends.mkldnn.is_available()


def _cuda_bf16() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve_precision(train_cfg, device) -> str:
    """``train.precision`` as Lightning names it, with ``auto`` decided for ``device``."""
    raw = train_cfg.get("precision", FP32)
    value = str(raw).strip().lower() if raw is not None else FP32
    if value == "auto":
        native = _cuda_bf16() if str(device).startswith("cuda") else native_bf16_cpu()
        return BF16 if native else FP32
    return _ALIASES.get(value, value)


def resolve_channels_last(train_cfg, device) -> bool:
    value = train_cfg.get("channels_last", "auto")
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return str(device).startswith("cuda")
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def autocast(precision: str, device) -> contextlib.AbstractContextManager:
    """bf16 autocast on ``device``'s type for ``bf16-mixed``; nothing otherwise."""
    if precision == BF16:
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_memory_format(model: torch.nn.Module, channels_last: bool) -> torch.nn.Module:
    return model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
