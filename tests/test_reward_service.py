"""The reward service (rlhf/rewards/service.py) over a real ZeroMQ socket: valid calls are
answered like local ones; malformed, oversized, unauthenticated and slow requests each get
a clear error while the service keeps serving."""

from __future__ import annotations

import math
import random
import time

import msgpack
import pytest
import zmq

from rlhf.rewards.service import PROTOCOL, RemoteReward, RemoteRewardError, RewardService

TOKEN = "s3cret-token"
MAX_BYTES = 64 * 1024
PROMPTS = ["1+2=", "10+20=", "5+5="]
COMPLETIONS = ["3", "31", "10"]


def lengths(prompts, completions, **_):
    return [float(len(c)) for c in completions]


def slow(prompts, completions, **_):
    time.sleep(3.0)
    return [0.0] * len(prompts)


def boom(prompts, completions, **_):
    raise ZeroDivisionError("division by zero in the user's code")


def odd(prompts, completions, **_):
    return [float("nan"), None, 1]


def by_column(prompts, completions, answer, **_):
    return [float(c.strip() == str(a)) for c, a in zip(completions, answer, strict=True)]


@pytest.fixture(scope="module")
def service():
    functions = {"lengths": lengths, "slow": slow, "boom": boom, "odd": odd,
                 "by_column": by_column}  # fmt: skip
    svc = RewardService(functions, TOKEN, max_bytes=MAX_BYTES, timeout_s=0.5)
    thread = svc.serve_in_thread()
    yield svc
    svc.stop()
    thread.join(timeout=10)


class RawClient:
    def __init__(self, address: str) -> None:
        self.socket = zmq.Context.instance().socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)

    def ask(self, *frames: bytes, timeout_s: float = 30.0) -> dict:
        self.socket.send_multipart(list(frames))
        assert self.socket.poll(int(timeout_s * 1000)), "no answer"
        return msgpack.unpackb(self.socket.recv(), raw=False)

    def close(self) -> None:
        self.socket.close(0)


def request(**fields) -> dict:
    base = {"v": PROTOCOL, "token": TOKEN, "id": 7, "fn": "lengths",
            "prompts": PROMPTS, "completions": COMPLETIONS, "columns": {}}  # fmt: skip
    base.update(fields)
    return {k: v for k, v in base.items() if v is not DROP}


DROP = object()


def pack(message) -> bytes:
    return msgpack.packb(message, use_bin_type=True)


def test_binds_to_localhost_by_default(service):
    assert service.address.startswith("tcp://127.0.0.1:")


def test_a_valid_call_scores_like_the_local_function(service):
    client = RawClient(service.address)
    try:
        answer = client.ask(pack(request()))
        assert answer == {"v": PROTOCOL, "id": 7, "ok": True,
                          "rewards": [1.0, 2.0, 2.0]}  # fmt: skip
        # extra dataset columns reach the function by name
        answer = client.ask(pack(request(fn="by_column", columns={"answer": [3, 30, 10]})))
        assert answer["rewards"] == [1.0, 0.0, 1.0]
        # NaN and None both come back as "no reward"
        assert client.ask(pack(request(fn="odd")))["rewards"] == [None, None, 1.0]
    finally:
        client.close()


def _fuzzed_frames(rng: random.Random) -> list[tuple[list[bytes], str]]:
    """(frames, the error code they must get): at least 200 bad requests of every kind."""
    good = pack(request())
    cases: list[tuple[list[bytes], str]] = []
    for _ in range(40):  # random bytes (msgpack reads some as a lone int or string)
        cases.append(([rng.randbytes(rng.randint(1, 200))], "bad_frame"))
    for _ in range(30):  # a valid request cut short, or with junk after it
        cut = rng.randint(1, len(good) - 1)
        cases.append(([good[:cut]], "bad_frame"))
        cases.append(([good + rng.randbytes(rng.randint(1, 20))], "bad_frame"))
    for value in (1, "text", [1, 2], None, True, 2.5, b"bytes"):  # not a map
        cases.append(([pack(value)], "bad_frame"))
    cases.append(([good, good], "bad_frame"))  # two frames
    cases.append(([b"\xc1"], "bad_frame"))  # a byte msgpack never uses
    for v in (0, 2, "1", None, DROP):
        cases.append(([pack(request(v=v))], "version"))
    for token in ("", "s3cret-tokeN", "s3cret", None, 123, DROP, TOKEN + "x"):
        cases.append(([pack(request(token=token))], "unauthorized"))
    bad_fields = [
        {"id": "7"}, {"id": None}, {"id": 1.5}, {"id": True}, {"id": DROP},
        {"fn": 3}, {"fn": None}, {"fn": DROP},
        {"prompts": "1+2="}, {"prompts": [1, 2, 3]}, {"prompts": DROP}, {"prompts": None},
        {"completions": ["3"]}, {"completions": [None, "1", "2"]}, {"completions": DROP},
        {"columns": []}, {"columns": {"answer": [1]}}, {"columns": {"answer": 3}},
        {"columns": {"not a name": [1, 2, 3]}}, {"columns": {"prompts": [1, 2, 3]}},
    ]  # fmt: skip
    for fields in bad_fields:
        cases.append(([pack(request(**fields))], "bad_request"))
    for name in ("nope", "lengths ", "os:system", ""):
        cases.append(([pack(request(fn=name))], "unknown_function"))
    for size in (MAX_BYTES + 1, MAX_BYTES + 4096, 2 * MAX_BYTES - 1024):
        cases.append(([pack(request(prompts=["x" * size]))], "too_large"))
        cases.append(([b"\x00" * size], "too_large"))
    for _ in range(60):  # a valid request with one random byte changed
        data = bytearray(good)
        i = rng.randrange(len(data))
        data[i] = (data[i] + rng.randint(1, 255)) % 256
        cases.append(([bytes(data)], "?"))  # some flips still decode: any clear answer
    return cases


def test_two_hundred_bad_frames_each_get_a_clear_error_and_the_service_keeps_serving(service):
    client = RawClient(service.address)
    try:
        cases = _fuzzed_frames(random.Random(0))
        assert len(cases) >= 200
        before = dict(service.errors)
        for frames, code in cases:
            answer = client.ask(*frames)
            assert set(answer) >= {"v", "id", "ok"}, answer
            if code == "?":
                assert answer["ok"] or answer["code"] in {"bad_frame", "version", "unauthorized",
                    "bad_request", "unknown_function", "function_failed"}, answer  # fmt: skip
                continue
            assert answer["ok"] is False, (frames, answer)
            assert answer["code"] == code, (frames, answer)
            assert isinstance(answer["error"], str) and answer["error"], answer
        # every answer was counted, and a valid call still works
        counted = sum(service.errors.values()) - sum(before.values())
        assert counted >= len([c for c in cases if c[1] != "?"])
        assert client.ask(pack(request()))["ok"] is True
    finally:
        client.close()


def test_a_frame_over_twice_the_limit_drops_the_connection_and_the_service_goes_on(service):
    client = RawClient(service.address)
    try:
        client.socket.send(b"\x00" * (3 * MAX_BYTES))  # ZeroMQ refuses it before it is read
        assert not client.socket.poll(2000)
        assert client.ask(pack(request()))["ok"] is True  # the client reconnects
    finally:
        client.close()


def test_a_slow_function_times_out_while_others_are_answered(service):
    slow_client, fast_client = RawClient(service.address), RawClient(service.address)
    try:
        slow_client.socket.send(pack(request(fn="slow", id=1)))
        assert fast_client.ask(pack(request(id=2)))["ok"] is True
        answer = msgpack.unpackb(
            slow_client.socket.recv() if slow_client.socket.poll(30_000) else pack({}), raw=False
        )
        assert answer == {"v": PROTOCOL, "id": 1, "ok": False, "code": "timeout",
                          "error": "took over 0.5 s"}  # fmt: skip
    finally:
        slow_client.close()
        fast_client.close()


def test_the_client_is_called_like_a_local_reward_function(service):
    remote = RemoteReward(service.address, "lengths", TOKEN, timeout_s=30)
    try:
        assert remote(PROMPTS, COMPLETIONS) == [1.0, 2.0, 2.0]
        by_column_remote = RemoteReward(service.address, "by_column", TOKEN, timeout_s=30)
        assert by_column_remote(PROMPTS, COMPLETIONS, answer=[3, 30, 10]) == [1.0, 0.0, 1.0]
        by_column_remote.close()
        with pytest.raises(RemoteRewardError, match="function_failed: ZeroDivisionError"):
            RemoteReward(service.address, "boom", TOKEN, timeout_s=30)(PROMPTS, COMPLETIONS)
        with pytest.raises(RemoteRewardError, match="unauthorized"):
            RemoteReward(service.address, "lengths", "wrong", timeout_s=30)(PROMPTS, COMPLETIONS)
        assert math.isfinite(remote(PROMPTS, COMPLETIONS)[0])  # still serving this client
    finally:
        remote.close()


def test_an_unreachable_service_is_an_error_naming_it_within_the_timeout():
    remote = RemoteReward("tcp://127.0.0.1:9", "lengths", TOKEN, timeout_s=0.5)
    with pytest.raises(RemoteRewardError, match=r"tcp://127.0.0.1:9 did not answer"):
        remote(PROMPTS, COMPLETIONS)


def test_the_serve_reward_command_serves_a_function_the_config_names_remotely(tmp_path):
    import subprocess
    import sys

    from rlhf.config import load_config
    from rlhf.rewards.builtin import addition_exact
    from rlhf.rewards.scoring import reward_function_of
    from rlhf.run.preflight import check_before_start
    from rlhf.sync.group import free_port

    port = free_port()
    token_file = tmp_path / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", "serve-reward", "--functions", "addition_exact",
         "--port", str(port), "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert f"serving addition_exact at tcp://127.0.0.1:{port}" in line, line
        assert token_file.stat().st_mode & 0o777 == 0o600  # the token it made: owner only
        entry = (
            f"reward.functions=[{{name: addition_exact, remote: 'tcp://127.0.0.1:{port}', "
            f"token_file: '{token_file}'}}]"
        )
        cfg = load_config(None, [entry])
        check_before_start(cfg)  # the token file is there
        fn = reward_function_of(cfg.reward.functions[0])
        answers = [3, 30, 10]
        got = fn(PROMPTS, COMPLETIONS, answer=answers)
        assert got == list(addition_exact(PROMPTS, COMPLETIONS, answer=answers)) == [1, 0, 1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_serve_reward_command_serves_a_reward_model(tmp_path):
    """`--models rm=<folder>`: a reward model answers remotely what it scores locally."""
    import subprocess
    import sys

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.rewards.reward_model_scorer import RewardModelScorer
    from rlhf.sync.group import free_port
    from tests.rows import tiny_model

    policy = tiny_model(tmp_path / "policy", 32, 2, 1, 64)
    rm = AutoModelForSequenceClassification.from_pretrained(policy, num_labels=1)
    with torch.no_grad():
        rm.score.weight.normal_(generator=torch.Generator().manual_seed(0))
    rm.save_pretrained(tmp_path / "rm")
    AutoTokenizer.from_pretrained(policy).save_pretrained(tmp_path / "rm")

    port, token_file = free_port(), tmp_path / "token"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.cli", "serve-reward", "--models", f"rm={tmp_path / 'rm'}",
         "--port", str(port), "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        seen = [proc.stdout.readline() for _ in range(1)]
        while "serving" not in seen[-1] and seen[-1] and len(seen) < 50:  # after any warnings
            seen.append(proc.stdout.readline())
        assert f"serving rm at tcp://127.0.0.1:{port}" in seen[-1], seen
        remote = RemoteReward(f"tcp://127.0.0.1:{port}", "rm", token_file.read_text().strip())
        got = remote(PROMPTS, COMPLETIONS)
        remote.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    want = RewardModelScorer(tmp_path / "rm")(PROMPTS, COMPLETIONS)
    assert len(set(want)) == len(want)  # the scores tell the samples apart
    # The same weights and tokens in two processes: equal up to how threads split the sums.
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_serve_reward_refuses_a_folder_that_is_no_reward_model(tmp_path, capsys):
    from rlhf.cli import main

    code = main(["serve-reward", "--models", f"rm={tmp_path / 'missing'}"])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"rlhf serve-reward: --models rm: {str(tmp_path / 'missing')!r} does not exist or is "
        "not a folder"
    )
