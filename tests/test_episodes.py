"""Multi-turn episodes: the environment protocol, the built-in calculator, and the runner on a
real vLLM engine (a tiny model; what the environments answer drives the episodes)."""

from __future__ import annotations

import math
import threading

import pytest
import torch

from rlhf.configbase import ConfigError
from rlhf.envs.base import EpisodeError, Step, checked_step, resolve_environment
from rlhf.envs.builtin import Calculator, GuessNumber, evaluate_arithmetic
from rlhf.envs.episodes import EnvCalls, EpisodeLimits, run_episodes
from rlhf.envs.tools import (
    MAX_RESULT_CHARS,
    ToolEnvironment,
    parse_call,
    resolve_tools,
    tool_schemas,
)
from tests.engine_checks import corpus

# ---------------------------------------------------------------- the protocol (no engine)


def test_arithmetic_is_evaluated_and_anything_else_refused():
    assert evaluate_arithmetic("12*34") == 408
    assert evaluate_arithmetic(" (7 - 10) / 2 ") == -1.5
    assert evaluate_arithmetic("6/3") == 2
    for bad in ("__import__('os')", "2**100", "x+1", "1/0", "9" * 14 + "*9", "", "1;2"):
        with pytest.raises(ValueError):
            evaluate_arithmetic(bad)


def test_calculator_answers_calls_and_scores_the_final_answer():
    env = Calculator()
    env.reset("What is 12 times 34?", answer="#### 408")
    call = env.step("I need <calc>12*34</calc>")
    assert (call.observation, call.reward, call.done) == ("<result>408</result>", 0.0, False)
    assert call.info == {"tool_calls": 1.0, "tool_errors": 0.0}
    bad = env.step("<calc>twelve</calc>")
    assert bad.observation == "<result>error</result>" and bad.info["tool_errors"] == 1.0
    assert env.step("So it is 408.") == Step("", 1.0, True)
    assert env.step("So it is 407.").reward == 0.0


def test_guess_the_number_answers_higher_lower_and_ends_on_the_secret():
    env = GuessNumber()
    env.reset("guess 1-100:", answer="37")
    assert env.step("50") == Step(" lower", 0.0, False)
    assert env.step("25") == Step(" higher", 0.0, False)
    assert env.step("hmm") == Step(" a number?", 0.0, False, {"invalid": 1.0})
    assert env.step("37") == Step("", 1.0, True, {"solved": 1.0})


def test_a_step_that_is_not_a_step_is_named():
    assert checked_step(("obs", 1, False)) == Step("obs", 1.0, False)
    for garbage, words in [
        (None, "NoneType"),
        (Step(observation=3), "observation"),  # type: ignore[arg-type]
        (Step(reward="high"), "reward"),  # type: ignore[arg-type]
        (Step(reward=math.nan), "nan"),
        (Step(done="yes"), "done"),  # type: ignore[arg-type]
    ]:
        with pytest.raises(ValueError, match=words):
            checked_step(garbage)


def test_an_environment_that_cannot_be_loaded_names_the_field():
    assert resolve_environment("calculator") is Calculator
    assert resolve_environment("rlhf.envs.builtin:Calculator") is Calculator
    for name, words in [
        ("calc", r"neither a built-in \(calculator, guess_number\)"),
        ("no_such_module:Env", "cannot load"),
        ("rlhf.envs.builtin:MAX_OPERAND", "not a class"),
        ("rlhf.envs.base:Step", "no reset"),
    ]:
        with pytest.raises(ConfigError, match=f"rollout.environment.*{words}"):
            resolve_environment(name)


def test_calls_that_never_return_are_reported_as_timeouts():
    never = threading.Event()

    def boom():
        raise RuntimeError("boom")

    with EnvCalls() as threads:
        out = threads.call_all([lambda: 1, boom, never.wait], timeout_s=0.2)
    assert out[0] == ("ok", 1)
    assert out[1][0] == "error" and str(out[1][1]) == "boom"
    assert out[2] == ("timeout", None)
    never.set()


def test_environment_calls_share_a_few_threads_and_a_hung_one_holds_only_its_own():
    """More calls than threads: each thread takes the next queued call, so one stuck in a
    call that never returns leaves the others to serve the rest, and the pool starts no
    more threads than its size."""
    never = threading.Event()
    before = threading.active_count()
    with EnvCalls(size=2) as threads:
        out = threads.call_all([never.wait, *(lambda i=i: i for i in range(20))], timeout_s=2.0)
        assert threading.active_count() - before <= 2
        assert out[0] == ("timeout", None) and out[1:] == [("ok", i) for i in range(20)]
        again = threads.call_all([lambda: "next turn"], timeout_s=2.0)  # the free thread
        assert again == [("ok", "next turn")]
    never.set()


def multiply(a: int, b: int) -> int:
    """Multiply two whole numbers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


def shout(text: str) -> str:
    """Upper-case a text.

    Args:
        text: what to upper-case
    """
    return text.upper() * 5000  # longer than a tool's answer may be


def undocumented(a: int) -> int:
    return a


def test_the_tool_environment_runs_calls_and_answers_errors_as_responses():
    tools = resolve_tools(["tests.test_episodes:multiply", "tests.test_episodes:shout"])
    env = ToolEnvironment(tools)
    env.reset("What is 12 times 34?", answer="408")
    call = '<tool_call>{"name": "multiply", "arguments": {"a": 12, "b": 34}}</tool_call>'
    step = env.step("Let me compute. " + call)
    assert step == Step("<tool_response>408</tool_response>", 0.0, False, TOOL_OK)
    for text, words in [
        ('<tool_call>{"name": "divide", "arguments": {}}</tool_call>', "no tool 'divide'"),
        ('<tool_call>{"name": "multiply", "arguments": {"a": 1}}</tool_call>', "TypeError"),
        ("<tool_call>multiply(1, 2)</tool_call>", "malformed: not JSON"),
        ('<tool_call>{"name": "multiply", "arguments": [1, 2]}</tool_call>', "malformed"),
    ]:
        answer = env.step(text)
        assert not answer.done and answer.info["tool_errors"] == 1.0, text
        assert (
            answer.observation.startswith("<tool_response>error: ") and words in answer.observation
        )
    long = env.step('<tool_call>{"name": "shout", "arguments": {"text": "hi"}}</tool_call>')
    assert long.info["tool_results_cut"] == 1.0
    assert len(long.observation) == len("<tool_response></tool_response>") + MAX_RESULT_CHARS
    assert env.step("The answer is 408.") == Step("", 0.0, True)  # no call: the final answer
    assert parse_call("I would call <tool_call>{...} later") is None  # not at the end


def test_tool_schemas_come_from_type_hints_and_docstrings():
    schemas = tool_schemas(resolve_tools(["tests.test_episodes:multiply"]))
    assert schemas[0]["function"]["name"] == "multiply"
    assert schemas[0]["function"]["parameters"]["required"] == ["a", "b"]
    with pytest.raises(ConfigError, match="rollout.tools: undocumented"):
        tool_schemas(resolve_tools(["tests.test_episodes:undocumented"]))
    with pytest.raises(ConfigError, match=r"rollout.tools\[0\]: 'multiply' is not of the form"):
        resolve_tools(["multiply"])


def test_a_chat_prompt_lists_the_tools_only_where_its_template_takes_them(tmp_path):
    from transformers import AutoTokenizer

    from rlhf.data.chat import prompt_ids
    from rlhf.models.tiny import build_tiny_model
    from rlhf.types import Prompt

    tokenizer = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", corpus()[:50]))
    schemas = tool_schemas(resolve_tools(["tests.test_episodes:multiply"]))
    prompt = Prompt("12*34=", messages=[{"role": "user", "content": "12*34="}])
    plain = tokenizer.decode(prompt_ids(tokenizer, prompt, schemas))
    assert "multiply" not in plain  # the tiny template has no tools
    tokenizer.chat_template = (
        "{% if tools %}tools: {% for t in tools %}{{ t['function']['name'] }} {% endfor %}\n"
        "{% endif %}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    )
    assert tokenizer.decode(prompt_ids(tokenizer, prompt, schemas)).startswith("tools: multiply")
    assert "multiply" not in tokenizer.decode(prompt_ids(tokenizer, prompt))


TOOL_OK = {"tool_calls": 1.0, "tool_errors": 0.0}


def test_an_environment_that_cannot_be_made_fails_its_episodes_only():
    def broken():
        raise RuntimeError("no licence for the simulator")

    # every episode fails before its first turn, so the engine is never called
    eps = run_episodes(None, None, broken, [("1+2=", {})], [[1, 2]], 3, 0, LIMITS)
    assert all(math.isnan(r) for r in eps.rewards) and eps.turns == [0, 0, 0]
    assert eps.metrics["env/errors"] == 3 and eps.generation.completion_ids == [[], [], []]


# ---------------------------------------------------------------- the runner on vLLM

OBSERVATION = "+11="  # the tiny model's tokenizer knows these characters


class Scripted:
    """Answers every turn with OBSERVATION and reward 1; done after `turns` turns (never when
    0); records the turns' texts."""

    turns = 3

    def reset(self, prompt: str, **columns) -> None:
        self.prompt, self.columns, self.texts = prompt, columns, []

    def step(self, text: str) -> Step:
        self.texts.append(text)
        return Step(OBSERVATION, 1.0, len(self.texts) == self.turns)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import AutoTokenizer

    from rlhf.engines.vllm_engine import VLLMEngine
    from rlhf.models.tiny import build_tiny_model

    path = str(build_tiny_model(tmp_path_factory.mktemp("tiny"), corpus()))
    engine = VLLMEngine(path, seed=0, max_model_len=256, kv_cache_bytes=128 * 2**20)
    yield engine, AutoTokenizer.from_pretrained(path), path
    engine.shutdown()


PROMPTS = [("1+2=", {"answer": "3"}), ("30+4=", {"answer": "34"})]
LIMITS = EpisodeLimits(
    max_turns=5, max_new_tokens=6, max_tokens=100, max_observation_tokens=16, timeout_s=30
)


def _run(setup, make_env, limits=LIMITS, n=3, seed=5, **kw):
    engine, tokenizer, _ = setup
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in PROMPTS]
    return ids, run_episodes(
        engine, tokenizer, make_env, PROMPTS, ids, n, seed, limits, temperature=1.0, **kw
    )


@pytest.mark.slow
def test_episodes_interleave_policy_turns_and_observations(setup):
    engine, tokenizer, path = setup
    envs: list[Scripted] = []

    def make():
        envs.append(Scripted())
        return envs[-1]

    ids, eps = _run(setup, make)
    obs = tokenizer(OBSERVATION, add_special_tokens=False)["input_ids"]
    # made in the threads that run them, in any order
    assert sorted(e.prompt for e in envs) == ["1+2="] * 3 + ["30+4="] * 3
    assert all(e.columns == PROMPTS[1][1] for e in envs if e.prompt == "30+4=")
    unmatched = list(envs)
    assert eps.turns == [3] * 6 and eps.rewards == [3.0] * 6
    assert eps.generation.finish_reasons == ["stop"] * 6
    assert eps.metrics["env/episodes"] == 6 and eps.metrics["env/errors"] == 0
    for i, (toks, mask, lps) in enumerate(
        zip(eps.generation.completion_ids, eps.policy_masks, eps.generation.logprobs, strict=True)
    ):
        # policy turn, observation, policy turn, observation, policy turn: the observation's
        # tokens sit where the mask is 0, exactly, and each turn's text is what the env got
        runs, start = [], 0
        for j in range(1, len(mask) + 1):
            if j == len(mask) or mask[j] != mask[start]:
                runs.append((mask[start], toks[start:j]))
                start = j
        assert [m for m, _ in runs] == [1, 0, 1, 0, 1]
        assert all(t == obs for m, t in runs if m == 0)
        turns = [tokenizer.decode(t, skip_special_tokens=True) for m, t in runs if m == 1]
        # an environment of the episode's prompt got exactly its turns' texts
        mine = [e for e in unmatched if e.prompt == PROMPTS[i // 3][0] and e.texts == turns]
        assert mine, (turns, [e.texts for e in unmatched])
        unmatched.remove(mine[0])  # (two samples alike would have two such environments)
        assert all(lp == 0.0 for lp, m in zip(lps, mask, strict=True) if m == 0)

    # The policy tokens' log-probs are the learner's: a plain forward over the whole
    # episode (observations included in the context) gives them.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for i, (toks, mask, lps) in enumerate(
        zip(eps.generation.completion_ids, eps.policy_masks, eps.generation.logprobs, strict=True)
    ):
        prompt = ids[i // 3]
        with torch.inference_mode():
            logits = model(torch.tensor([prompt + toks])).logits[0, len(prompt) - 1 : -1]
        want = torch.log_softmax(logits, -1).gather(-1, torch.tensor(toks)[:, None])[:, 0]
        policy = torch.tensor(mask, dtype=torch.bool)
        torch.testing.assert_close(torch.tensor(lps)[policy], want[policy], atol=2e-3, rtol=0)

    _, again = _run(setup, Scripted)  # a seed makes episodes reproducible
    assert again.generation.completion_ids == eps.generation.completion_ids
    assert len({tuple(t) for t in eps.generation.completion_ids[:3]}) > 1  # samples differ


class Endless(Scripted):
    turns = 0  # never done

    def __init__(self, observation: str = OBSERVATION) -> None:
        self.observation = observation

    def step(self, text: str) -> Step:
        super().step(text)
        return Step(self.observation, 0.5, False)


@pytest.mark.slow
def test_limits_end_episodes_and_are_counted(setup):
    _, eps = _run(setup, Endless)
    assert eps.turns == [5] * 6 and eps.rewards == [2.5] * 6  # max_turns; rewards summed
    assert eps.generation.finish_reasons == ["length"] * 6
    assert eps.metrics["env/max_turns_reached"] == 6

    last = EpisodeLimits(**{**LIMITS.__dict__, "turn_rewards": "last"})
    assert _run(setup, Endless, last)[1].rewards == [0.5] * 6
    discounted = EpisodeLimits(**{**LIMITS.__dict__, "turn_rewards": "discounted"})
    discounted = EpisodeLimits(**{**discounted.__dict__, "turn_discount": 0.5})
    assert _run(setup, Endless, discounted)[1].rewards == [0.5 * (2 - 0.5**4)] * 6
    per_turn = EpisodeLimits(**{**LIMITS.__dict__, "turn_rewards": "per_turn"})
    placed = _run(setup, Endless, per_turn)[1]
    assert placed.rewards == [2.5] * 6  # the sum, for the algorithms without placement
    for mask, rewards in zip(placed.policy_masks, placed.token_rewards, strict=True):
        # 0.5 on the last token of each policy turn: where the mask falls to 0, and the end
        ends = [j for j in range(len(mask)) if mask[j] and (j + 1 == len(mask) or not mask[j + 1])]
        assert [j for j, r in enumerate(rewards) if r] == ends and len(ends) == 5
        assert all(rewards[j] == 0.5 for j in ends)

    # A token budget of 20 after the prompt: 6-token turns and 4-token observations
    tight = EpisodeLimits(**{**LIMITS.__dict__, "max_tokens": 20})
    _, eps = _run(setup, Endless, tight)
    assert all(len(t) <= 20 for t in eps.generation.completion_ids)
    assert max(len(t) for t in eps.generation.completion_ids) > 12  # it got near the budget
    assert eps.metrics["env/out_of_tokens"] + eps.metrics["env/max_turns_reached"] == 6

    # An observation longer than max_observation_tokens is cut to it, and counted.
    _, eps = _run(setup, lambda: Endless("1+2=3" * 10))
    assert eps.metrics["env/observations_cut"] > 0
    for mask in eps.policy_masks:
        runs = "".join(str(m) for m in mask).split("1")
        assert max(len(r) for r in runs) <= LIMITS.max_observation_tokens


class Fails(Scripted):
    """Episodes of the second prompt fail on their first step, in the way given."""

    def __init__(self, how: str) -> None:
        self.how = how

    def step(self, text: str):
        if self.prompt == "30+4=":
            if self.how == "raise":
                raise RuntimeError("the tool is down")
            if self.how == "garbage":
                return {"observation": "?"}
            threading.Event().wait()  # hangs for ever
        return super().step(text)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["raise", "garbage", "hang"])
def test_a_failing_environment_ends_only_its_episodes(setup, how):
    limits = EpisodeLimits(**{**LIMITS.__dict__, "timeout_s": 1.0})
    _, eps = _run(setup, lambda: Fails(how), limits)
    assert eps.rewards[:3] == [3.0] * 3  # the first prompt's episodes run their course
    assert all(math.isnan(r) for r in eps.rewards[3:])  # on_error "drop": no loss weight
    assert eps.turns[3:] == [1] * 3
    key = "env/timeouts" if how == "hang" else "env/errors"
    assert eps.metrics[key] == 3

    zero = EpisodeLimits(**{**limits.__dict__, "on_error": "zero"})
    assert _run(setup, lambda: Fails(how), zero)[1].rewards[3:] == [0.0] * 3
    if how == "raise":
        stop = EpisodeLimits(**{**limits.__dict__, "on_error": "raise"})
        with pytest.raises(EpisodeError, match="the tool is down"):
            _run(setup, lambda: Fails(how), stop)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["vllm", "hf"])
def test_stop_strings_end_a_turn_on_the_token_that_completes_them(setup, kind):
    from rlhf.engines.hf_engine import HFEngine

    engine, tokenizer, path = setup
    if kind == "hf":
        engine = HFEngine(path, seed=0)
    prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p, _ in PROMPTS]
    args = dict(n=8, max_new_tokens=12, temperature=1.0, seed=3)
    free = engine.generate(prompts, **args)
    texts = [tokenizer.decode(t, skip_special_tokens=True) for t in free.completion_ids]
    # the characters the samples write most often after their first: they will cut many
    counts: dict[str, int] = {}
    for text in texts:
        for ch in set(text[1:]):
            # printable ASCII: a byte-level tokenizer's partial characters decode to U+FFFD
            # here, while vLLM's incremental detokenizer holds them back
            if ch.isascii() and ch.isprintable():
                counts[ch] = counts.get(ch, 0) + 1
    stop = sorted(counts, key=lambda ch: (-counts[ch], ch))[:2]  # the two most common
    cut = engine.generate(prompts, **args, stop=stop)
    stopped = 0
    for toks, whole, reason in zip(
        cut.completion_ids, free.completion_ids, cut.finish_reasons, strict=True
    ):
        # The same seeded draws up to the first token whose text completes the stop string,
        # which ends the completion and stays in it.
        ends = [
            j
            for j in range(1, len(whole) + 1)
            if any(x in tokenizer.decode(whole[:j], skip_special_tokens=True) for x in stop)
        ]
        if ends:
            assert toks == whole[: ends[0]] and reason == "stop", (stop, tokenizer.decode(toks))
            stopped += 1
        else:
            assert toks == whole
    assert stopped >= 4, (stop, texts)  # the most common characters cut many samples


# ---------------------------------------------------------------- `rlhf train` with episodes

# The user's environment module, beside where they launch: a hint after the first turn, then
# the second turn is scored against the prompt's `answer` column.
HINTED = """
from rlhf.envs import Step

class Hinted:
    def reset(self, prompt, answer, **columns):
        self.answer, self.turns = answer, 0

    def step(self, text):
        self.turns += 1
        if self.turns == 1:
            return Step(observation=" 1+1=", info={"hints": 1.0})
        return Step(reward=1.0 if text.strip() == self.answer else 0.0, done=True)
"""


@pytest.mark.slow
def test_grpo_trains_on_two_turn_episodes_on_vllm(tmp_path):
    """`rlhf train rollout.environment=...` on the built-in task: every sample an episode of
    two policy turns with the environment's hint between them; the environment's rewards are
    the samples' rewards (no reward function configured), and the learner's log-probs of the
    policy's tokens equal the sampler's after each sync."""
    from tests.run_options import NO_DASHBOARD, ONE_EACH
    from tests.test_real_shapes import records_of, strict_json, train

    (tmp_path / "myenv.py").write_text(HINTED)
    proc = train(tmp_path, "rollout.environment=myenv:Hinted", "run.iterations=2",
                 "rollout.prompts_per_iteration=16", "run.eval_prompts=64",
                 *ONE_EACH, NO_DASHBOARD)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp_path / "runs" / "run"
    records = records_of(run)
    assert len(records) == 2
    hint = 5  # " 1+1=" in the default tokenizer: one token a character
    for r in records:
        assert r["env/episodes"] == 16 * 8 and r["env/hints"] == 16 * 8
        assert r["env/turns_mean"] == 2 and r["env/errors"] == r["env/timeouts"] == 0
        assert r["rollout/observation_tokens"] == 16 * 8 * hint
        assert r["reward/mean"] == r["reward/env_mean"]  # the environment's rewards alone
        assert r["reward/dropped"] == 0
        assert r["sync/logprob_abs_diff"] < 1e-5  # over the policy's tokens only
    summary = strict_json(run / "summary.json")
    assert summary["eval/greedy_reward_before"] is not None


# ---------------------------------------------------------------- masking in the learner's loss


@pytest.mark.parametrize("algorithm", ["grpo", "ppo", "reinforce_pp"])
def test_no_gradient_reaches_an_episodes_observation_tokens(tmp_path, algorithm):
    """The learner's own forward and loss (rlhf.workers.learner) on episodes: the loss's
    gradient with respect to the log-prob and entropy of every observation token is exactly
    zero (weights 0), and not zero on the policy's tokens. KL and entropy terms included."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    from rlhf.batch import collate_rollouts
    from rlhf.config import load_config
    from rlhf.models.logprobs import model_token_logprobs, pad_rows
    from rlhf.training.train_step import to_tensors
    from rlhf.types import Rollout
    from rlhf.workers.learner import LearnerWorker
    from tests.rows import tiny_model

    path = tiny_model(tmp_path, hidden=32, heads=2, kv_heads=2, inter=64)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    rng = np.random.default_rng(0)
    prompts = [[5, 6, 7], [8, 9]]
    # per sample: turn, observation, turn (, observation, turn), of random tokens
    masks = [[1, 1, 0, 0, 0, 1], [1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 1, 0, 1], [1, 0, 1]]
    completions = [rng.integers(3, 60, size=len(m)).tolist() for m in masks]
    prompt_ids = [prompts[0], prompts[0], prompts[1], prompts[1]]
    ids, attention = pad_rows([p + c for p, c in zip(prompt_ids, completions, strict=True)], pad=0)
    with torch.no_grad():
        own = model_token_logprobs(model, ids, attention, 1.0)
    sampler = [
        [own[i, len(p) + j].item() * m for j, m in enumerate(mask)]
        for i, (p, mask) in enumerate(zip(prompt_ids, masks, strict=True))
    ]
    rollout = Rollout(prompt_ids, completions, sampler, ["stop"] * 4, [0, 0, 1, 1], 0,
                      policy_masks=masks, env_rewards=[1.0, 0.0, 0.5, 0.0],
                      token_rewards=[[0.5 * x for x in m] for m in masks])  # fmt: skip
    batch = collate_rollouts([rollout], pad_id=0)
    batch["rewards"] = batch["env_rewards"]
    batch["ref_logprobs"] = batch["sampler_logprobs"] - 0.1 * batch["completion_mask"]
    batch["values"] = rng.normal(size=batch["input_ids"].shape) * batch["completion_mask"]
    cfg = load_config(None, [f"algorithm.name={algorithm}", "algorithm.beta=0.05",
                             "algorithm.entropy_coef=0.01", "rollout.environment=calculator",
                             "rollout.turn_rewards=per_turn"])  # fmt: skip
    learner = LearnerWorker.__new__(LearnerWorker)
    learner.cfg, learner.algorithm = cfg, cfg.make_algorithm()
    learner.algorithm.prepare(batch)
    mb = to_tensors(batch, "cpu")
    out = learner.forward(model, mb)
    out.logprobs.retain_grad()
    out.entropy.retain_grad()
    loss, _ = learner.loss(out, mb)
    loss.backward()
    policy = mb["completion_mask"] > 0
    episode = torch.zeros_like(policy)
    for i, (p, c) in enumerate(zip(prompt_ids, completions, strict=True)):
        episode[i, len(p) : len(p) + len(c)] = True
    observation = episode & ~policy
    assert observation.sum() == 9  # the test has observation tokens to check
    for grad in (out.logprobs.grad, out.entropy.grad):
        assert (grad[observation] == 0).all()
        assert (grad[policy] != 0).float().mean() > 0.5  # the policy's tokens are trained
