"""What is sent in a weight sync, and how it is cut into flat buckets.

Both sides of a sync hold the same manifest (the learner's parameter list) and run the same
`plan_buckets`, so the receiver knows every bucket's layout without any metadata on the wire.
A bucket is one contiguous byte buffer: each tensor's bytes start at an offset aligned to
`ALIGN`, so a slice of the buffer can be viewed back as the tensor's dtype without a copy
(mixed dtypes can share a bucket).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from math import prod

import torch

ALIGN = 64  # bytes; enough for any dtype view, and cache-line friendly

# Measured on CPU/gloo (benchmarks/results/sync_bucketing.md): 16 MiB is as fast as any size
# for a 1M model and the fastest for a 100M one; from 64 MiB on, receive buffers exceed
# glibc's mmap threshold (32 MiB), are page-faulted afresh on every sync, and it gets 2x slower.
# Since receivers reuse their buffers from one sync to the next (`WeightSyncGroup`), that cliff
# is gone: 16, 64 and 256 MiB were within noise for 50M and 200M models
# (benchmarks/results/weight_sync.md).
DEFAULT_BUCKET_BYTES = 16 * 2**20


@dataclass(frozen=True)
class ParamSpec:
    name: str  # HF state-dict name, e.g. "model.layers.0.self_attn.q_proj.weight"
    shape: tuple[int, ...]
    dtype: str  # e.g. "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"parameter {self.name!r}: unknown dtype {self.dtype!r}")
        return dtype

    @property
    def numel(self) -> int:
        return prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize


def manifest_of(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> list[ParamSpec]:
    """The manifest of a state dict, in its iteration order."""
    return [ParamSpec(name, tuple(t.shape), _dtype_name(t)) for name, t in named_tensors]


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan_buckets(manifest: list[ParamSpec], bucket_bytes: int) -> list[list[ParamSpec]]:
    """Greedy, order-preserving cut of `manifest` into buckets of at most `bucket_bytes`.

    Deterministic (depends on nothing but its arguments). A tensor larger than
    `bucket_bytes` gets a bucket of its own; `bucket_bytes <= 0` means one tensor per bucket.
    """
    buckets: list[list[ParamSpec]] = []
    current: list[ParamSpec] = []
    used = 0  # == bucket_nbytes(current)
    for spec in manifest:
        if current and _aligned(used) + spec.nbytes > bucket_bytes:
            buckets.append(current)
            current, used = [], 0
        used = (_aligned(used) if current else 0) + spec.nbytes
        current.append(spec)
    if current:
        buckets.append(current)
    return buckets


def _offsets(bucket: list[ParamSpec]) -> list[int]:
    out, offset = [], 0
    for spec in bucket:
        out.append(offset)
        offset = _aligned(offset + spec.nbytes)
    return out


def bucket_nbytes(bucket: list[ParamSpec]) -> int:
    """Size of the bucket's buffer: padding between tensors, none after the last one."""
    if not bucket:
        return 0
    return _offsets(bucket)[-1] + bucket[-1].nbytes


def pack_bucket(
    bucket: list[ParamSpec],
    tensors: list[torch.Tensor],
    device: torch.device | str,
    scratch: torch.Tensor | None = None,
) -> torch.Tensor:
    """Copy `tensors` (matching `bucket`) into one flat uint8 buffer on `device`.

    With `scratch` (a uint8 buffer on `device`, large enough) the result is a view of it.
    """
    size = bucket_nbytes(bucket)
    if scratch is not None and scratch.numel() >= size:
        buf = scratch[:size]
    else:
        buf = torch.empty(size, dtype=torch.uint8, device=device)
    for spec, t, offset in zip(bucket, tensors, _offsets(bucket), strict=True):
        check_matches(spec, t)
        buf[offset : offset + spec.nbytes].copy_(t.detach().reshape(-1).view(torch.uint8))
    return buf


def unpack_bucket(bucket: list[ParamSpec], buf: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
    """Views of `buf` (laid out by `pack_bucket`) as the bucket's tensors; no copies."""
    for spec, offset in zip(bucket, _offsets(bucket), strict=True):
        raw = buf[offset : offset + spec.nbytes]
        yield spec.name, raw.view(spec.torch_dtype).view(spec.shape)


def check_matches(spec: ParamSpec, t: torch.Tensor) -> None:
    """A sender-side tensor must match the manifest both sides agreed on."""
    if tuple(t.shape) != spec.shape or _dtype_name(t) != spec.dtype:
        raise ValueError(
            f"parameter {spec.name!r}: tensor is {tuple(t.shape)} {_dtype_name(t)}, "
            f"manifest says {spec.shape} {spec.dtype}"
        )
