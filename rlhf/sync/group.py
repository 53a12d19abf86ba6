"""The learner -> rollout weight-sync group: one sender (rank 0), N receivers.

It is a process group of its own, built from a `TCPStore` plus a gloo/NCCL backend object,
so it never touches `torch.distributed`'s default group: a learner keeps its training group
and a vLLM worker keeps vLLM's own group.

No step may hang. Joining and every version go through a store handshake with a deadline
before any collective starts, so a peer that never shows up is named in the error
(`WeightSyncTimeout`); the backend gets the same timeout for a peer that dies mid-broadcast.
After a failure, rebuild the group: its members count syncs to name each one's store keys.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from rlhf.sync.buckets import ParamSpec, bucket_nbytes, check_matches, pack_bucket, plan_buckets
from rlhf.sync.buckets import unpack_bucket as _unpack

SENDER = 0
CANCEL_KEY = "cancel"  # posted by `cancel_sync`: every wait of the group gives up


def resolve_backend(choice: str, uses_gpus: bool) -> str:
    """A process group's backend: 'auto' means NCCL when every member uses a GPU, gloo
    otherwise (the one rule for the training groups and the weight-sync group)."""
    if choice != "auto":
        return choice
    return "nccl" if uses_gpus else "gloo"


def cancel_sync(host: str, port: int, reason: str, timeout_s: float = 10.0) -> None:
    """Make every member of the sync group whose store is at host:port stop waiting (a
    member died: the others would otherwise wait out `sync.timeout_s`). The group must be
    rebuilt afterwards."""
    client = dist.TCPStore(
        host,
        port,
        None,
        is_master=False,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )
    client.set(CANCEL_KEY, reason)


@dataclass(frozen=True)
class SyncEndpoint:
    """Where and how one member joins a sync group: everything `WeightSyncGroup` needs."""

    host: str  # the sender's address (it hosts the store)
    port: int
    rank: int  # 0 = sender (learner rank 0); 1..N = rollout workers
    world_size: int
    backend: str  # "gloo" | "nccl"
    timeout_s: float
    peer_names: tuple[str, ...]  # by rank, for errors that name who did not answer

    def for_rank(self, rank: int) -> SyncEndpoint:
        return replace(self, rank=rank)

    def to_wire(self) -> dict[str, Any]:
        """Plain types, for RPC layers that take no dataclasses (vLLM's collective_rpc)."""
        wire = asdict(self)
        wire["peer_names"] = list(self.peer_names)
        return wire

    @classmethod
    def from_wire(cls, wire: dict[str, Any]) -> SyncEndpoint:
        return cls(**{**wire, "peer_names": tuple(wire["peer_names"])})


class WeightSyncTimeout(RuntimeError):
    """A peer of the sync group did not answer in time (or died); the message names it."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def host_store(host: str, world_size: int, timeout_s: float) -> dist.TCPStore:
    """A TCPStore server listening on a port the OS picks at bind time (`.port` says which):
    no window between choosing a free port and binding it, in which another process on a
    busy machine could take it."""
    return dist.TCPStore(
        host,
        0,
        world_size,
        is_master=True,
        timeout=timedelta(seconds=timeout_s),
        wait_for_workers=False,
    )


def local_address_towards(host: str) -> str:
    """This machine's address on the route to `host` (no packet is sent)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, 9))
        return str(s.getsockname()[0])


def _make_backend(
    store: dist.Store,
    rank: int,
    world_size: int,
    backend: str,
    timeout: timedelta,
    host: str,
) -> dist.ProcessGroup:
    if backend == "gloo":
        # Gloo listens on the interface facing the sender (loopback for a local group),
        # not on whatever the machine's hostname resolves to.
        opts = dist.ProcessGroupGloo._Options()
        opts._timeout = timeout
        opts._devices = [dist.ProcessGroupGloo.create_device(hostname=local_address_towards(host))]
        return dist.ProcessGroupGloo(store, rank, world_size, opts)
    if backend == "nccl":
        nccl = getattr(dist, "ProcessGroupNCCL", None)
        if nccl is None:
            raise RuntimeError("backend 'nccl' asked for, but this torch build has no NCCL")
        opts = nccl.Options()
        opts._timeout = timeout
        return nccl(store, rank, world_size, opts)
    raise ValueError(f"sync backend must be 'gloo' or 'nccl', got {backend!r}")


def _storage_refs(t: torch.Tensor) -> int:
    """How many tensors share `t`'s storage (views included); -1 where torch cannot say,
    which never matches a recorded count, so nothing is reused blindly."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return -1 if count is None else int(count(t.untyped_storage()._cdata))


class WeightSyncGroup:
    """A process group of its own (separate from any training group): rank 0 is learner rank 0
    (the sender), ranks 1..N are rollout workers. Rank 0 hosts the TCPStore."""

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        backend: str,
        timeout_s: float,
        peer_names: list[str],
        device: str | torch.device = "cpu",
        store: dist.TCPStore | None = None,
    ) -> None:
        """`store`: the sender's already-listening store (see `host_store`), so no port is
        chosen first and bound later (another process could take it in between)."""
        if world_size < 2:
            raise ValueError(f"a sync group needs a sender and a receiver; world_size={world_size}")
        if len(peer_names) != world_size:
            raise ValueError(f"peer_names has {len(peer_names)} names for world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside 0..{world_size - 1}")
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"sync backend must be 'gloo' or 'nccl', got {backend!r}")
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self.peer_names = list(peer_names)
        self.timeout_s = float(timeout_s)
        self.device = torch.device(device)
        self._broken: str | None = None
        self._pg: dist.ProcessGroup | None = None
        # Kept from one sync to the next: the sender's packing buffer, and on CPU each
        # bucket's receive buffer (see `_receive_buffer`).
        self._scratch: torch.Tensor | None = None
        # Syncs over this group so far: every member counts the same, so round n's store
        # keys are its own even when a version is sent again.
        self._round = 0
        self._received: dict[int, tuple[torch.Tensor, int]] = {}
        timeout = timedelta(seconds=self.timeout_s)
        try:
            self._store: dist.TCPStore | None = store or dist.TCPStore(
                host,
                port,
                world_size,
                is_master=rank == SENDER,
                timeout=timeout,
                wait_for_workers=False,
            )
        except Exception as e:  # DistNetworkError / DistStoreError / RuntimeError by version
            if rank == SENDER:
                raise RuntimeError(
                    f"{self._who(rank)}: cannot host the sync store on {host}:{port}: {e}"
                ) from e
            raise WeightSyncTimeout(
                f"{self._who(rank)}: could not reach the sync store of {self._who(SENDER)} "
                f"at {host}:{port} within {self.timeout_s:g}s: {e}"
            ) from e
        try:
            everyone = range(world_size)
            self._handshake("join", everyone, "join the sync group")
            self._pg = _make_backend(
                dist.PrefixStore("pg", self._store), rank, world_size, backend, timeout, host
            )
        except BaseException:
            self.close()
            raise

    @classmethod
    def join(
        cls,
        endpoint: SyncEndpoint,
        device: str | torch.device = "cpu",
        store: dist.TCPStore | None = None,
    ) -> WeightSyncGroup:
        e = endpoint
        return cls(
            e.host,
            e.port,
            e.rank,
            e.world_size,
            e.backend,
            e.timeout_s,
            list(e.peer_names),
            device,
            store,
        )

    # ------------------------------------------------------------------ naming and handshakes
    def _who(self, rank: int) -> str:
        return f"{self.peer_names[rank]} (sync rank {rank})"

    def _handshake(self, prefix: str, ranks: Iterable[int], what: str) -> None:
        """Post `prefix/{my rank}`, wait for `prefix/{r}` of every r in `ranks` (deadline)."""
        assert self._store is not None
        self._store.set(f"{prefix}/{self.rank}", "1")
        self._wait_keys({r: f"{prefix}/{r}" for r in ranks if r != self.rank}, what)

    def _wait_keys(self, keys: dict[int, str], what: str, timeout_s: float | None = None) -> None:
        """Until every key exists; raises at the deadline naming the ranks whose key is
        missing, or at once when someone outside posts `CANCEL_KEY` (`cancel_sync`: the
        controller saw a member die, so waiting on it is pointless)."""
        assert self._store is not None
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if not keys:
            return
        deadline = time.monotonic() + timeout_s
        pause = 0.001
        cause: Exception | None = None
        try:
            while not self._store.check(list(keys.values())):
                if self._store.check([CANCEL_KEY]):
                    reason = self._store.get(CANCEL_KEY).decode()
                    raise WeightSyncTimeout(f"{self._who(self.rank)}: {what} cancelled: {reason}")
                if time.monotonic() >= deadline:
                    break
                time.sleep(pause)
                pause = min(pause * 2, 0.005)  # quick when peers are on time, cheap when not
            else:
                return
        except WeightSyncTimeout:
            raise
        except Exception as e:  # the store itself is gone: the sender (its host) died
            cause = e
        missing = []
        for r, k in keys.items():
            try:
                if not self._store.check([k]):
                    missing.append(r)
            except Exception:
                missing.append(SENDER)
                break
        missing = sorted(set(missing)) or sorted(keys)
        names = ", ".join(self._who(r) for r in missing)
        raise WeightSyncTimeout(
            f"{self._who(self.rank)}: {names} did not {what} within {timeout_s:g}s"
        ) from cause

    def _check_usable(self) -> None:
        if self._broken is not None:
            raise WeightSyncTimeout(f"sync group is broken ({self._broken}); rebuild it")
        if self._pg is None or self._store is None:
            raise RuntimeError("sync group is closed")

    # ------------------------------------------------------------------ one collective
    def _broadcast(self, buf: torch.Tensor, where: str) -> None:
        assert self._pg is not None
        opts = dist.BroadcastOptions()
        opts.rootRank = SENDER
        opts.timeout = timedelta(seconds=self.timeout_s)
        try:
            self._pg.broadcast([buf], opts).wait()
        except Exception as e:
            self._broken = f"{where} failed"
            others = ", ".join(self._who(r) for r in range(self.world_size) if r != self.rank)
            raise WeightSyncTimeout(
                f"{self._who(self.rank)}: {where} failed (a peer of [{others}] died or "
                f"stalled past {self.timeout_s:g}s): {e}"
            ) from e

    def _flat(
        self, bucket: list[ParamSpec], tensors: list[torch.Tensor], scratch: torch.Tensor | None
    ) -> torch.Tensor:
        if len(bucket) == 1:  # a lone tensor goes as it is: no copy
            check_matches(bucket[0], tensors[0])
            t = tensors[0].detach()
            if t.device == self.device and t.is_contiguous():
                return t.reshape(-1).view(torch.uint8)
        return pack_bucket(bucket, tensors, self.device, scratch)

    # ------------------------------------------------------------------ public
    def send(
        self,
        named_tensors: Iterable[tuple[str, torch.Tensor]],
        manifest: list[ParamSpec],
        bucket_bytes: int,
        version: int,
    ) -> dict[str, float]:
        """Broadcast every tensor of `manifest` (from `named_tensors`, same order) to all."""
        if self.rank != SENDER:
            raise RuntimeError(f"{self._who(self.rank)} is a receiver; only rank 0 sends")
        self._check_usable()
        assert self._store is not None
        t0 = time.perf_counter()
        self._round += 1
        n = self._round
        receivers = {r: f"ready/{n}/{r}" for r in range(1, self.world_size)}
        try:
            self._wait_keys(receivers, f"get ready for weights version {version}")
        except WeightSyncTimeout as e:
            self._store.set(f"go/{n}", f"abort:{e}")  # receivers waiting fail fast
            raise
        self._store.set(f"go/{n}", "ok")
        # Every receiver is ready for this round, so each has read the previous round's "go":
        # only now may its keys go (a receiver that reads "go" late must still find it).
        if n > 1:
            for k in [f"go/{n - 1}", *(f"ready/{n - 1}/{r}" for r in receivers)]:
                self._store.delete_key(k)
        t1 = time.perf_counter()
        source = iter(named_tensors)
        buckets = plan_buckets(manifest, bucket_bytes)
        scratch = self._packing_buffer(buckets)
        sent = 0
        for i, bucket in enumerate(buckets):
            try:
                tensors = []
                for spec in bucket:
                    name, t = next(source, (None, None))
                    if name != spec.name:
                        raise ValueError(
                            f"named_tensors gave {name!r} where manifest has {spec.name!r}"
                        )
                    tensors.append(t)
                buf = self._flat(bucket, tensors, scratch)
            except Exception:
                # Receivers are mid-version now; they fail on the backend's timeout.
                self._broken = f"version {version} stopped at bucket {i + 1}"
                raise
            self._broadcast(buf, f"version {version} bucket {i + 1}/{len(buckets)}")
            sent += sum(spec.nbytes for spec in bucket)  # payload, not padding
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        t2 = time.perf_counter()
        return {
            "bytes": float(sent),
            "seconds": t2 - t0,
            "handshake_seconds": t1 - t0,
            "broadcast_seconds": t2 - t1,
            "buckets": float(len(buckets)),
        }

    def receive(
        self, manifest: list[ParamSpec], bucket_bytes: int, version: int
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield (name, tensor) for every entry of `manifest`, bucket by bucket.

        Lazy: the handshake happens on the first `next()`. Consume it to the end. Tensors are
        views of one buffer per bucket and stay valid after the iteration moves on, for as
        long as the consumer holds them (vLLM's layer-wise reload holds them until every
        weight of a layer has arrived): a buffer is reused by a later sync only once no view
        of it is left (`_receive_buffer`).
        """
        if self.rank == SENDER:
            raise RuntimeError("rank 0 sends; receivers are ranks 1..N")
        self._check_usable()
        assert self._store is not None
        self._round += 1
        n = self._round
        self._store.set(f"ready/{n}/{self.rank}", "1")
        # A little longer than the sender waits: if a peer is missing, the sender's abort
        # (which names it) arrives before this receiver's own deadline.
        grace = max(2.0, 0.1 * self.timeout_s)
        self._wait_keys(
            {SENDER: f"go/{n}"}, f"start weights version {version}", self.timeout_s + grace
        )
        answer = self._store.get(f"go/{n}").decode()
        if answer.startswith("abort:"):
            raise WeightSyncTimeout(f"{self._who(SENDER)} aborted version {version}: {answer[6:]}")
        buckets = plan_buckets(manifest, bucket_bytes)
        for i, bucket in enumerate(buckets):
            buf = self._receive_buffer(i, bucket_nbytes(bucket))
            self._broadcast(buf, f"version {version} bucket {i + 1}/{len(buckets)}")
            yield from _unpack(bucket, buf)
        for stale in [i for i in self._received if i >= len(buckets)]:  # a shorter plan
            del self._received[stale]

    # ------------------------------------------------------------------ buffers
    def _packing_buffer(self, buckets: list[list[ParamSpec]]) -> torch.Tensor:
        """One packing buffer for every bucket, kept across sends: each broadcast has finished
        (or, on NCCL, is ordered before the next copy on this stream) before it is
        overwritten, and a send ends with its stream synchronized. Fresh large buffers would
        cost a page fault per 4 KiB on every sync."""
        size = max((bucket_nbytes(b) for b in buckets if len(b) > 1), default=0)
        if self._scratch is None or self._scratch.numel() < size:
            self._scratch = None  # free the old one first
            self._scratch = torch.empty(size, dtype=torch.uint8, device=self.device)
        return self._scratch

    def _receive_buffer(self, index: int, nbytes: int) -> torch.Tensor:
        """The buffer bucket `index` is received into.

        On CPU, the last sync's buffer for this bucket is reused when no view of it survives
        (the consumer copied the weights out: vLLM's reload, the HF engine): a fresh buffer is
        page-faulted in on every sync, which costs about as much as the transfer itself
        (benchmarks/results/weight_sync.md). The price: a CPU receiver keeps one received
        copy of the weights between syncs. A consumer that keeps the tensors gets fresh
        buffers, as before. On GPU the caching allocator already reuses memory.
        """
        if self.device.type != "cpu":
            return torch.empty(nbytes, dtype=torch.uint8, device=self.device)
        kept = self._received.get(index)
        if kept is not None and kept[0].numel() == nbytes and _storage_refs(kept[0]) == kept[1]:
            return kept[0]
        buf = torch.empty(nbytes, dtype=torch.uint8)
        self._received[index] = (buf, _storage_refs(buf))
        return buf

    def close(self) -> None:
        """Tear the group down and free the store's port (rank 0). Safe to call twice."""
        pg, self._pg = self._pg, None
        self._scratch, self._received = None, {}
        if pg is not None:
            try:
                pg.shutdown()
            except Exception:  # best effort: a broken backend may refuse
                pass
        self._store = None  # the TCPStore server stops (and frees the port) when released
