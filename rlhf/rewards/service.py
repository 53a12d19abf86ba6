"""Reward functions served over ZeroMQ: for reward code that lives outside the cluster (a
sandbox, another team's service).

    rlhf serve-reward --functions addition_exact,my_rewards:score --port 5555

The wire is msgpack over a ZeroMQ ROUTER socket, never pickle. A request is one frame, a map:

    {"v": 1, "token": str, "id": int, "fn": str,
     "prompts": [str], "completions": [str], "columns": {name: [value per sample]}}

and each answer is one frame: {"v": 1, "id": id, "ok": true, "rewards": [float or nil]} or
{"v": 1, "id": id (nil if unreadable), "ok": false, "code": str, "error": str}. Codes:
`bad_frame` (not one msgpack map), `version`, `unauthorized`, `too_large`, `bad_request` (a
field missing or of the wrong type; the error names it), `unknown_function`, `timeout` (the
function ran past the service's limit), `function_failed`.

Guards: the service binds to 127.0.0.1 unless told otherwise; every request carries the
token (compared in constant time); a frame over `max_bytes` gets `too_large` (ZeroMQ drops the
connection of one over twice that, before it is read); each call runs in a worker thread with
a deadline, so a slow function never stops the service answering others.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import msgpack
import zmq

PROTOCOL = 1
DEFAULT_MAX_BYTES = 16 * 2**20


class RemoteRewardError(RuntimeError):
    """The service answered with an error, or did not answer in time."""


def read_token(path: str, field: str = "token_file") -> str:
    """The token in `path`; `ConfigError` naming `field` when there is none."""
    from pathlib import Path

    from rlhf.configbase import ConfigError

    file = Path(path).expanduser()
    try:
        token = file.read_text().strip()
    except OSError as err:
        raise ConfigError(f"{field}: cannot read the reward service's token: {err}") from None
    if not token:
        raise ConfigError(f"{field}: {str(file)!r} is empty")
    return token


def token_for_serving(path: str) -> str:
    """The token in `path`, made (random, readable by the owner only) if there is none."""
    import os
    import secrets
    from pathlib import Path

    file = Path(path).expanduser()
    if file.is_file() and file.read_text().strip():
        return file.read_text().strip()
    file.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(32)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token)
    return token


def _plain(value: Any) -> Any:
    """numpy scalars and arrays (dataset columns often are) as plain msgpack values."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"cannot send a {type(value).__name__} to the reward service")


def _pack(message: dict[str, Any]) -> bytes:
    return msgpack.packb(message, use_bin_type=True, default=_plain)


def _error(rid: Any, code: str, text: str) -> dict[str, Any]:
    return {"v": PROTOCOL, "id": rid if isinstance(rid, int) else None, "ok": False,
            "code": code, "error": text}  # fmt: skip


def _strings(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise ValueError(f"{name} must be a list of strings")
    return value


@dataclass
class RewardService:
    """Serves `functions` (name -> fn(prompts, completions, **columns)) until `stop()`."""

    functions: dict[str, Callable[..., Sequence[float | None]]]
    token: str
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port (see `address` once started)
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout_s: float = 60.0
    workers: int = 4
    served: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.token:
            raise ValueError("the reward service needs a token")
        self._ctx = zmq.Context()
        self._socket = self._ctx.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.MAXMSGSIZE, 2 * self.max_bytes)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self.port:
            self._socket.bind(f"tcp://{self.host}:{self.port}")
        else:
            self.port = self._socket.bind_to_random_port(f"tcp://{self.host}")
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="reward-fn")

    @property
    def address(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    # ------------------------------------------------------------------ the loop
    def serve(self) -> None:
        """Answer requests until `stop()`; a call in flight past its deadline is answered
        `timeout` (its thread finishes on its own; the answer is dropped)."""
        running: dict[Future, tuple[bytes, int, float]] = {}
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                if poller.poll(20):
                    frames = self._socket.recv_multipart(zmq.NOBLOCK)
                    self._take(frames, running)
                now = time.monotonic()
                for fut, (peer, rid, deadline) in list(running.items()):
                    if fut.done():
                        del running[fut]
                        self._reply(peer, self._outcome(fut, rid))
                    elif now > deadline:
                        del running[fut]
                        self._reply(peer, _error(rid, "timeout", f"took over {self.timeout_s} s"))
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._socket.close(0)
            self._ctx.term()

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="reward-service", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ one request
    def _take(self, frames: list[bytes], running: dict) -> None:
        peer, body = frames[0], frames[1:]
        if len(body) != 1:
            return self._reply(peer, _error(None, "bad_frame", "send exactly one frame"))
        (data,) = body
        if len(data) > self.max_bytes:
            return self._reply(
                peer, _error(None, "too_large", f"{len(data)} bytes; the limit is {self.max_bytes}")
            )
        try:
            request = msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True)
        except Exception as err:  # msgpack raises several kinds for junk
            return self._reply(peer, _error(None, "bad_frame", f"not msgpack: {err}"[:300]))
        if not isinstance(request, dict):
            return self._reply(peer, _error(None, "bad_frame", "the frame must be a msgpack map"))
        rid = request.get("id")
        if request.get("v") != PROTOCOL:
            return self._reply(
                peer, _error(rid, "version", f"protocol {request.get('v')!r}; this is {PROTOCOL}")
            )
        token = request.get("token")
        if not isinstance(token, str) or not hmac.compare_digest(
            token.encode(), self.token.encode()
        ):
            return self._reply(peer, _error(rid, "unauthorized", "missing or wrong token"))
        try:
            call = self._parse(request)
        except ValueError as err:
            return self._reply(peer, _error(rid, "bad_request", str(err)))
        if isinstance(call, dict):
            return self._reply(peer, call)
        fn, prompts, completions, columns = call
        fut = self._pool.submit(
            lambda: list(fn(prompts=prompts, completions=completions, **columns))
        )
        running[fut] = (peer, rid, time.monotonic() + self.timeout_s)

    def _parse(self, request: dict[str, Any]):
        rid = request.get("id")
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise ValueError("id must be an integer")
        name = request.get("fn")
        if not isinstance(name, str):
            raise ValueError("fn must be a string")
        if name not in self.functions:
            known = ", ".join(sorted(self.functions))
            return _error(rid, "unknown_function", f"no function {name!r}; served: {known}")
        prompts = _strings(request.get("prompts"), "prompts")
        completions = _strings(request.get("completions"), "completions")
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        columns = request.get("columns", {})
        if not isinstance(columns, dict):
            raise ValueError("columns must be a map of name to list")
        for key, values in columns.items():
            if not key.isidentifier() or key in ("prompts", "completions"):
                raise ValueError(f"columns: {key!r} is not a usable argument name")
            if not isinstance(values, list) or len(values) != len(prompts):
                raise ValueError(f"columns.{key} must be a list with one value per sample")
        return self.functions[name], prompts, completions, columns

    def _outcome(self, fut: Future, rid: int) -> dict[str, Any]:
        try:
            values = fut.result()
            rewards = [None if v is None else float(v) for v in values]
        except Exception as err:  # the user's function: anything may happen
            return _error(rid, "function_failed", f"{type(err).__name__}: {err}"[:1000])
        rewards = [None if v is not None and not math.isfinite(v) else v for v in rewards]
        self.served += 1
        return {"v": PROTOCOL, "id": rid, "ok": True, "rewards": rewards}

    def _reply(self, peer: bytes, message: dict[str, Any]) -> None:
        if not message.get("ok", True):
            self.errors[message["code"]] = self.errors.get(message["code"], 0) + 1
        self._socket.send_multipart([peer, _pack(message)])


class RemoteReward:
    """A reward function that calls `name` on the service at `address`, as a local one is
    called: fn(prompts, completions, **columns) -> list[float | None]."""

    def __init__(self, address: str, name: str, token: str, timeout_s: float = 60.0) -> None:
        self.address, self.name, self.token, self.timeout_s = address, name, token, timeout_s
        self._ctx = zmq.Context.instance()
        self._socket: zmq.Socket | None = None
        self._next_id = 0

    def _connect(self) -> zmq.Socket:
        if self._socket is None:
            self._socket = self._ctx.socket(zmq.DEALER)
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(self.address)
        return self._socket

    def __call__(self, prompts, completions, **columns) -> list[float | None]:
        self._next_id += 1
        rid = self._next_id
        request = {"v": PROTOCOL, "token": self.token, "id": rid, "fn": self.name,
                   "prompts": list(prompts), "completions": list(completions),
                   "columns": {k: list(v) for k, v in columns.items()}}  # fmt: skip
        socket = self._connect()
        socket.send(_pack(request))
        deadline = time.monotonic() + self.timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not socket.poll(int(left * 1000) + 1):
                self.close()  # a late answer must not be read as the next call's
                raise RemoteRewardError(
                    f"reward service {self.address} did not answer {self.name!r} in "
                    f"{self.timeout_s} s"
                )
            answer = msgpack.unpackb(socket.recv(), raw=False)
            if answer.get("id") not in (rid, None):
                continue  # an answer to an earlier call that timed out
            if not answer.get("ok"):
                raise RemoteRewardError(
                    f"reward service {self.address}, {self.name!r}: {answer.get('code')}: "
                    f"{answer.get('error')}"
                )
            return answer["rewards"]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close(0)
            self._socket = None
