"""The weight-sync group over real gloo process groups between real processes."""

from __future__ import annotations

import multiprocessing as mp
import socket

import pytest
import torch

from rlhf.sync import (
    ParamSpec,
    WeightSyncGroup,
    WeightSyncTimeout,
    free_port,
    manifest_of,
    plan_buckets,
)
from rlhf.sync.buckets import ALIGN, bucket_nbytes, pack_bucket, unpack_bucket

NAMES = ["learner-0", "rollout-0", "rollout-1"]
HOST = "127.0.0.1"


def _state(version: int) -> dict[str, torch.Tensor]:
    """Many tensors of mixed shapes and dtypes; different values for every version."""
    g = torch.Generator().manual_seed(version)
    shapes = [(7, 3), (3,), (64, 32), (1,), (5, 5, 2), (300,)] * 10
    out = {f"layers.{i}.w": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    out["half"] = torch.randn(33, generator=g).to(torch.bfloat16)
    out["index"] = torch.arange(10, dtype=torch.int64) * version
    out["flag"] = torch.tensor([True, False, version % 2 == 0])
    out["scalar"] = torch.tensor(float(version))
    return out


def _spawn(target, *args):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    proc = ctx.Process(target=target, args=(*args, q), daemon=True)
    proc.start()
    assert q.get(timeout=60) == "up"
    return proc, q


def _join(proc, timeout: float = 30.0) -> None:
    proc.join(timeout=timeout)
    if proc.is_alive():
        proc.kill()
        pytest.fail("a receiver process hung")


def _receiver(port, rank, world, versions, bucket_bytes, timeout_s, q) -> None:
    q.put("up")  # torch is imported: joining starts now (short timeouts stay meaningful)
    try:
        group = WeightSyncGroup(HOST, port, rank, world, "gloo", timeout_s, NAMES[:world])
        manifest = manifest_of(_state(0).items())
        for v in versions:
            got = list(group.receive(manifest, bucket_bytes, v))
            want = _state(v)
            same = [n for n, _ in got] == list(want) and all(
                torch.equal(t, want[n]) and t.dtype == want[n].dtype for n, t in got
            )
            q.put((rank, v, same))
        group.close()
    except Exception as err:  # report, so the test fails (or checks) with the reason
        q.put((rank, -1, f"{type(err).__name__}: {err}"))


# ---------------------------------------------------------------- bucket planning
def test_bucket_plan_is_deterministic_and_complete():
    manifest = manifest_of(_state(0).items())
    for bucket_bytes in (0, 100, 4096, 1 << 30):
        plan = plan_buckets(manifest, bucket_bytes)
        assert plan == plan_buckets(list(manifest), bucket_bytes)
        assert [s for b in plan for s in b] == manifest  # every parameter once, in order
        for b in plan:
            assert len(b) == 1 or bucket_nbytes(b) <= bucket_bytes
    assert len(plan_buckets(manifest, 0)) == len(manifest)
    assert len(plan_buckets(manifest, 1 << 30)) == 1
    big, small = ParamSpec("big", (1000,), "float32"), ParamSpec("s", (2,), "float32")
    assert plan_buckets([small, big, small], 16) == [[small], [big], [small]]


def test_bucket_layout_by_hand():
    # Sizes: a 40 B, b 10 B, c 400 B (more than a bucket), d 16 B, e 3 B, f 64 B.
    a, b = ParamSpec("a", (10,), "float32"), ParamSpec("b", (5,), "bfloat16")
    c, d = ParamSpec("c", (100,), "float32"), ParamSpec("d", (2,), "int64")
    e, f = ParamSpec("e", (3,), "bool"), ParamSpec("f", (4, 4), "float32")
    manifest = [a, b, c, d, e, f]
    assert ALIGN == 64  # the offsets below assume it
    # 128 B: a + b = 64 (a padded) + 10 = 74; c alone; d + e = 64 + 3 = 67; f would start at
    # 128, so it goes alone (unpadded, d + e + f = 83 B would have fitted).
    assert plan_buckets(manifest, 128) == [[a, b], [c], [d, e], [f]]
    assert [bucket_nbytes(x) for x in ([a, b], [c], [d, e], [f])] == [74, 400, 67, 64]
    # The limit is inclusive and counts the padding: 74 B still holds a + b, 73 B does not.
    assert plan_buckets(manifest, 74) == [[a, b], [c], [d, e], [f]]
    assert plan_buckets(manifest, 73) == [[a], [b], [c], [d, e], [f]]
    # Each tensor's bytes start at a multiple of ALIGN: b at 64, e at 64.
    ta, tb = torch.arange(10, dtype=torch.float32), torch.arange(5).to(torch.bfloat16)
    buf = pack_bucket([a, b], [ta, tb], "cpu")
    assert torch.equal(buf[0:40].view(torch.float32), ta)
    assert torch.equal(buf[64:74].view(torch.bfloat16), tb)
    td, te = torch.tensor([7, -7]), torch.tensor([True, False, True])
    buf = pack_bucket([d, e], [td, te], "cpu")
    assert torch.equal(buf[0:16].view(torch.int64), td)
    assert buf[64:67].tolist() == [1, 0, 1]


def test_pack_and_unpack_round_trip_mixed_dtypes():
    state = _state(3)
    manifest = manifest_of(state.items())
    (bucket,) = plan_buckets(manifest, 1 << 30)
    buf = pack_bucket(bucket, list(state.values()), "cpu")
    assert buf.dtype == torch.uint8 and buf.numel() == bucket_nbytes(bucket)
    for name, t in unpack_bucket(bucket, buf):
        assert torch.equal(t, state[name]) and t.dtype == state[name].dtype
    with pytest.raises(ValueError, match="layers.0.w"):
        pack_bucket(bucket, [torch.zeros(2), *list(state.values())[1:]], "cpu")


# ---------------------------------------------------------------- real process groups
# Buckets for `_state`'s 64 tensors, by hand. 0: one per tensor. 4096 B: the first group's
# (7, 3) + (3,) (84 + 12 B), then per group the 8 KiB (64, 32) alone, then its three small
# followers with the next group's first two (1676 B with padding; the last group's with the
# four extra tensors, 1860 B): 1 + 10 * 2 buckets. 1 GiB: all in one.
@pytest.mark.slow
@pytest.mark.parametrize(("bucket_bytes", "num_buckets"), [(0, 64), (4096, 21), (1 << 30, 1)])
def test_two_receivers_get_exact_tensors_for_two_versions(bucket_bytes, num_buckets):
    port = free_port()
    receivers = [_spawn(_receiver, port, r, 3, [1, 2], bucket_bytes, 30.0) for r in (1, 2)]
    sender = WeightSyncGroup(HOST, port, 0, 3, "gloo", 30.0, NAMES)
    try:
        for v in (1, 2):
            state = _state(v)
            stats = sender.send(state.items(), manifest_of(state.items()), bucket_bytes, v)
            assert stats["bytes"] == sum(t.numel() * t.element_size() for t in state.values())
            assert stats["buckets"] == num_buckets
        results = sorted(q.get(timeout=60) for _, q in receivers for _ in range(2))
        assert results == [(1, 1, True), (1, 2, True), (2, 1, True), (2, 2, True)]
    finally:
        sender.close()
        for proc, _ in receivers:
            _join(proc)
    with socket.socket() as s:  # close() stopped the store: a rebuilt group can listen there
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as TCPStore does
        s.bind((HOST, port))
        s.listen()


def _copying_receiver(port, bucket_bytes, q) -> None:
    """v1: copied out and dropped; v2: views kept; v3: received while v2's views are alive.
    Reports (version, exact, addresses of the receive buffers, v2's views still exact)."""
    q.put("up")
    try:
        group = WeightSyncGroup(HOST, port, 1, 2, "gloo", 30.0, NAMES[:2])
        manifest = manifest_of(_state(0).items())
        kept: dict[str, torch.Tensor] = {}
        for v in (1, 2, 3):
            got, buffers = {}, set()
            for name, t in group.receive(manifest, bucket_bytes, v):
                buffers.add(t.untyped_storage().data_ptr())
                got[name] = t if v == 2 else t.clone()  # clone: as vLLM and the HF engine copy
            want = _state(v)
            exact = list(got) == list(want) and all(torch.equal(got[n], want[n]) for n in want)
            kept_exact = all(torch.equal(t, _state(2)[n]) for n, t in kept.items())
            q.put((v, exact, sorted(buffers), kept_exact))
            if v == 2:
                kept = got
        group.close()
    except Exception as err:  # report, so the test fails with the reason
        q.put((-1, False, f"{type(err).__name__}: {err}", False))


@pytest.mark.slow
def test_receive_buffers_are_reused_only_when_no_view_survives():
    """CPU receivers reuse the last sync's buffers (no page faults), but never under a view
    the consumer still holds."""
    port = free_port()
    proc, q = _spawn(_copying_receiver, port, 4096)
    sender = WeightSyncGroup(HOST, port, 0, 2, "gloo", 30.0, NAMES[:2])
    try:
        for v in (1, 2, 3):
            state = _state(v)
            sender.send(state.items(), manifest_of(state.items()), 4096, v)
        (v1, ok1, bufs1, _), (v2, ok2, bufs2, _), (v3, ok3, bufs3, kept_ok) = (
            q.get(timeout=60) for _ in range(3)
        )
        assert (v1, v2, v3) == (1, 2, 3) and ok1 and ok2 and ok3, (bufs1, bufs2, bufs3)
        assert len(bufs1) == 21  # one buffer per bucket
        assert bufs2 == bufs1  # nothing held v1's views: its buffers came back
        assert not set(bufs3) & set(bufs2)  # v2's views were alive: fresh buffers
        assert kept_ok  # and the views still hold version 2
    finally:
        sender.close()
        _join(proc)


@pytest.mark.slow
def test_peer_that_never_joins_is_named_and_nothing_hangs():
    port = free_port()
    # rollout-0 joins; rollout-1 never comes.
    proc, q = _spawn(_receiver, port, 1, 3, [1], 4096, 3.0)
    try:
        with pytest.raises(WeightSyncTimeout, match=r"rollout-1 \(sync rank 2\) did not join"):
            WeightSyncGroup(HOST, port, 0, 3, "gloo", 3.0, NAMES)
        rank, version, err = q.get(timeout=15)  # the receiver that came gave up too
        assert (rank, version) == (1, -1)
        # It names the absent peer, or the sender if the sender's store closed first.
        assert "WeightSyncTimeout" in err
        assert "rollout-1 (sync rank 2)" in err or "learner-0 (sync rank 0)" in err
    finally:
        _join(proc)


@pytest.mark.slow
def test_peer_that_never_gets_ready_is_named_and_nothing_hangs():
    port = free_port()
    # Both receivers join, but rollout-1 never asks for version 1.
    ready = _spawn(_receiver, port, 1, 3, [1], 4096, 3.0)
    idle = _spawn(_receiver, port, 2, 3, [], 4096, 3.0)
    sender = WeightSyncGroup(HOST, port, 0, 3, "gloo", 3.0, NAMES)
    try:
        state = _state(1)
        with pytest.raises(WeightSyncTimeout, match=r"rollout-1 \(sync rank 2\) did not get ready"):
            sender.send(state.items(), manifest_of(state.items()), 4096, 1)
        rank, version, err = ready[1].get(timeout=15)  # the waiting receiver hears the abort
        assert (rank, version) == (1, -1)
        assert "aborted version 1" in err and "rollout-1 (sync rank 2)" in err
    finally:
        sender.close()
        for proc, _ in (ready, idle):
            _join(proc)


@pytest.mark.slow
def test_sync_that_stops_midway_fails_on_both_sides():
    port = free_port()
    proc, q = _spawn(_receiver, port, 1, 2, [1], 0, 3.0)
    sender = WeightSyncGroup(HOST, port, 0, 2, "gloo", 3.0, NAMES[:2])
    try:
        state = _state(1)
        manifest = manifest_of(state.items())
        items = list(state.items())
        items[4] = ("not.in.manifest", items[4][1])  # the sender's source goes wrong mid-sync
        with pytest.raises(ValueError, match="not.in.manifest"):
            sender.send(items, manifest, 0, 1)
        rank, version, err = q.get(timeout=15)  # the receiver is not left hanging
        assert (rank, version) == (1, -1)
        assert "WeightSyncTimeout" in err and "bucket 5/" in err
        with pytest.raises(WeightSyncTimeout, match="rebuild"):
            sender.send(state.items(), manifest, 0, 2)
    finally:
        sender.close()
        _join(proc)


def test_receiver_names_a_sender_that_never_starts():
    port = free_port()
    with pytest.raises(WeightSyncTimeout, match=r"learner-0 \(sync rank 0\)"):
        WeightSyncGroup(HOST, port, 1, 2, "gloo", 2.0, NAMES[:2])


@pytest.mark.slow
def test_cancel_stops_a_sender_waiting_on_a_dead_receiver_long_before_its_deadline():
    """The controller saw rollout-1 die: `cancel_sync` makes the sender stop waiting for it
    at once (with the reason), instead of at its 600 s deadline; the waiting receiver stops
    too."""
    import threading

    from rlhf.sync.group import cancel_sync

    port = free_port()
    ready = _spawn(_receiver, port, 1, 3, [1], 4096, 600.0)
    idle = _spawn(_receiver, port, 2, 3, [], 4096, 600.0)
    sender = WeightSyncGroup(HOST, port, 0, 3, "gloo", 600.0, NAMES)
    failure: list[BaseException] = []

    def send() -> None:
        state = _state(1)
        try:
            sender.send(state.items(), manifest_of(state.items()), 4096, 1)
        except BaseException as err:
            failure.append(err)

    try:
        thread = threading.Thread(target=send, daemon=True)
        thread.start()
        cancel_sync(HOST, port, "rollout-1 died")
        thread.join(timeout=60)  # a tenth of the deadline: cancelled, not timed out
        assert not thread.is_alive()
        (err,) = failure
        assert isinstance(err, WeightSyncTimeout)
        assert "cancelled: rollout-1 died" in str(err)
        rank, version, message = ready[1].get(timeout=60)
        assert (rank, version) == (1, -1)  # it stops too: cancelled, or aborted by the sender
        assert "rollout-1 died" in message or "aborted version 1" in message
    finally:
        sender.close()
        for proc, _ in (ready, idle):
            _join(proc, timeout=60)
