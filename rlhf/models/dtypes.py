"""Which floating-point type each pool computes in.

`model.dtype` is the run's choice; `rollout.dtype`, `learner.dtype`, `reference.dtype` and
`critic.dtype` override it for one pool (None follows `model.dtype`). "auto" means bfloat16
where the device computes it natively (a CUDA GPU with bfloat16 support) and float32
elsewhere: on the CPUs measured here (no native bfloat16) it ran at about half the speed of
float32, and the exactness tests compare float32 results.

Resolution happens inside each worker, which knows the device it got.
"""

from __future__ import annotations

from typing import Literal

from rlhf.configbase import ConfigError

DTYPES = ("float32", "bfloat16", "float16")
DtypeChoice = Literal["auto", "float32", "bfloat16", "float16"]
DeviceKind = Literal["cpu", "cuda", "cuda-bf16"]


def device_kind(use_cuda: bool) -> DeviceKind:
    """What this process computes on: a CUDA GPU with or without bfloat16, or the CPU
    (also when `use_cuda` but no GPU is visible)."""
    import torch

    if use_cuda and torch.cuda.is_available():
        return "cuda-bf16" if torch.cuda.is_bf16_supported() else "cuda"
    return "cpu"


def resolve_dtype(choice: str, kind: DeviceKind, field: str = "model.dtype") -> str:
    """The dtype name ("float32" | "bfloat16" | "float16") a pool computes in, for a choice
    read from `field` and a device of `kind`; a `ConfigError` naming `field` when the choice
    is unknown or the device cannot compute it."""
    if choice == "auto":
        return "bfloat16" if kind == "cuda-bf16" else "float32"
    if choice not in DTYPES:
        raise ConfigError(f"{field}: {choice!r} is not a dtype; allowed: auto, {', '.join(DTYPES)}")
    if choice == "bfloat16" and kind == "cuda":
        raise ConfigError(
            f"{field}: bfloat16 needs a GPU that supports it (NVIDIA Ampere or newer); this one "
            "does not: use float16 or float32 (or auto)"
        )
    return choice


def pool_choice(model_dtype: str, pool_dtype: str | None, pool: str) -> tuple[str, str]:
    """(choice, the field it was read from) for a pool's `<pool>.dtype` override."""
    if pool_dtype is None:
        return model_dtype, "model.dtype"
    return pool_dtype, f"{pool}.dtype"


def pool_dtype(cfg, pool: str, use_cuda: bool) -> str:
    """The dtype `pool` (a config section with a `dtype` field: rollout, learner, reference,
    critic, reward_model_training) computes in on this process's device."""
    choice, field = pool_choice(cfg.model.dtype, getattr(cfg, pool).dtype, pool)
    return resolve_dtype(choice, device_kind(use_cuda), field)
