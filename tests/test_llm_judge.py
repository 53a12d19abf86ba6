"""The LLM judge (`reward.judge.kind=llm`).

Without a model: the verdict parser, P(a > b) from A/B log-probs by hand, template filling,
config errors, the training pairs, and the reward worker's handling of the judge's answers
(both orders, no answer) with a stand-in judge. End to end (slow): a tiny judge trained
locally to say which of two completions of the addition task is right, on a vLLM engine of
the reward worker, judged against the exact reward on held-out prompts.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from rlhf.config import ConfigError, load_config
from rlhf.rewards.judge_training import (
    MISTAKES,
    both_orders,
    mistake_of_kind,
    plausible_mistake,
)
from rlhf.rewards.judges import JudgeError
from rlhf.rewards.verdicts import (
    DEFAULT_TEMPLATE,
    fill_template,
    letter_of_token,
    parse_verdict,
    probability_from_logprobs,
    verdict_probability,
)

# ---------------------------------------------------------------- the verdict parser
VERDICTS = {
    "A": "A",
    " b": "B",
    "Answer: B": "B",
    "[[A]]": "A",
    "A.": "A",
    "B</s>": "B",
    "\n\n(B)": "B",
    "**A**": "A",
    "b.": "B",
    "The better answer is B": "B",
    "Verdict: [[B]]": "B",
    "I think [[A]] is right": "A",
    "A because 46 is the sum": "A",
    "Better answer (A or B): A": "A",  # the question echoed, then the verdict
    "B\nA": "B",  # the first clear verdict wins
    "Answer: (b)": "B",
}
NO_VERDICT = [
    "",
    "  ",
    "C",
    "12",
    "Apple",
    "AB",
    "A1",
    "a+b",
    "A or B",
    "A/B",
    "B, A",
    "a number",  # the article, not a verdict
    "the answer is a number",
    "both",
    "Answer: c",
    "\ufffd\ufffd",
]


@pytest.mark.parametrize("text", list(VERDICTS))
def test_parser_finds_the_first_clear_verdict(text):
    verdict, offset = parse_verdict(text)
    assert verdict == VERDICTS[text]
    assert text[offset].upper() == verdict  # the offset points at the verdict's letter


@pytest.mark.parametrize("text", NO_VERDICT)
def test_parser_gives_no_answer_for_junk(text):
    assert parse_verdict(text) == (None, -1)


def test_candidate_tokens_by_letter():
    assert [letter_of_token(t) for t in ("A", " A", "a", "[[B", "B.", " b\n")] == list("AAABBB")
    assert [letter_of_token(t) for t in ("C", "AB", "7", "", " ", "Ab")] == [None] * 6


# ---------------------------------------------------------------- probabilities
def test_probability_from_a_and_b_logprobs_by_hand():
    lp = math.log
    candidates = [("A", lp(0.6)), (" B", lp(0.2)), ("b", lp(0.1)), ("7", lp(0.05))]
    # p_A = 0.6, p_B = 0.2 + 0.1 (both spellings), other tokens ignored: 0.6 / 0.9
    assert probability_from_logprobs(candidates) == pytest.approx(2 / 3, rel=1e-12)
    assert verdict_probability("A", candidates) == (pytest.approx(2 / 3, rel=1e-12), True)
    # the probability follows the log-probs even where the greedy verdict was the other
    assert verdict_probability("B", candidates)[0] == pytest.approx(2 / 3, rel=1e-12)
    # far apart: no overflow, and the limits are exact
    assert probability_from_logprobs([("A", -1000.0), ("B", 0.0)]) == 0.0
    assert probability_from_logprobs([("A", 0.0), ("B", -1000.0)]) == 1.0
    assert probability_from_logprobs([("A", -3.0), ("B", -3.0)]) == 0.5


def test_without_both_letters_the_parsed_verdict_decides():
    only_a = [("A", -0.1), ("7", -2.5)]
    assert probability_from_logprobs(only_a) is None
    assert verdict_probability("A", only_a) == (1.0, False)
    assert verdict_probability("B", only_a) == (0.0, False)
    assert verdict_probability("B", []) == (0.0, False)
    p, from_logprobs = verdict_probability(None, [("A", -0.1), ("B", -2.0)])
    assert math.isnan(p) and not from_logprobs


# ---------------------------------------------------------------- the template
def test_template_filling():
    assert fill_template("Q {prompt} | {a} | {b}", "1+2=", "3", "4") == "Q 1+2= | 3 | 4"
    # inserted text is not scanned again; other braces stay literal
    assert fill_template("{prompt}:{a}:{b} {x} {{a}}", "{b}", "{a}", "}") == "{b}:{a}:} {x} {{a}}"
    text = fill_template(DEFAULT_TEMPLATE, "12+34=", "46", "47")
    assert text.index("12+34=46") < text.index("12+34=47")  # each candidate shown whole
    assert text.endswith("B: 12+34=47\n")  # the verdict comes next


def test_default_template_tokenizes_sensibly_for_the_tiny_model():
    from rlhf.config import TaskConfig
    from rlhf.data.tasks import make_task
    from rlhf.models.families import TinyShape
    from rlhf.models.tiny import train_tokenizer

    task = make_task(TaskConfig())
    tokenizer = train_tokenizer(task.corpus())  # what the default model is built with
    cfg = load_config(None, [])
    longest = fill_template(DEFAULT_TEMPLATE, "99+99=", "198", "1988")
    ids = tokenizer(longest).input_ids
    # fits the tiny model's context (its positions) with the verdict budget to spare
    positions = TinyShape().max_position_embeddings
    assert len(ids) + cfg.reward.judge.llm.max_new_tokens <= positions
    assert len(ids) <= 64, len(ids)  # short: the judge is trained on it
    for letter in "AB":
        verdict = tokenizer(letter, add_special_tokens=False).input_ids
        assert len(verdict) == 1  # a verdict is one token: its log-probs are P(A), P(B)
        assert tokenizer.decode(ids + verdict) == longest + letter  # and follows the prompt


# ---------------------------------------------------------------- config errors
def test_llm_judge_config_errors_name_the_field(tmp_path):
    from rlhf.workers.reward import RewardWorker

    with pytest.raises(ConfigError, match=r"reward\.judge\.llm\.path"):
        load_config(None, ["reward.judge.kind=llm"])
    with pytest.raises(ConfigError, match=r"reward\.judge\.llm\.template.*\{b\}"):
        load_config(None, ["reward.judge.llm.template='{prompt} {a}'"])
    with pytest.raises(ConfigError, match=r"reward\.judge\.llm\.top_logprobs"):
        load_config(None, ["reward.judge.llm.top_logprobs=1"])
    for path, why in ((tmp_path / "nowhere", "not a folder"), (tmp_path, "no config.json")):
        cfg = load_config(None, ["reward.judge.kind=llm", f"reward.judge.llm.path={path}"])
        with pytest.raises(ConfigError, match=rf"reward\.judge\.llm\.path.*{why}"):
            RewardWorker(cfg, 0)  # checked before any engine starts


# ---------------------------------------------------------------- training pairs
def test_plausible_mistakes_are_wrong_numbers_of_every_kind():
    rng = np.random.default_rng(0)
    for answer in ["0", "1", "9", "10", "99", "100", "198"]:
        for _ in range(200):
            wrong = plausible_mistake(answer, rng)
            assert wrong != answer and wrong.isdigit()
    assert mistake_of_kind("46", "plus_one", rng) == "47"
    assert mistake_of_kind("46", "minus_ten", rng) == "36"
    wrong_digit = mistake_of_kind("46", "wrong_digit", rng)
    assert (
        len(wrong_digit) == 2 and sum(x != y for x, y in zip(wrong_digit, "46", strict=True)) == 1
    )
    assert mistake_of_kind("46", "drop_digit", rng) in ("4", "6")
    assert len(mistake_of_kind("46", "add_digit", rng)) == 3
    # impossible mistakes are None, not a negative or empty answer
    assert mistake_of_kind("0", "minus_one", rng) is None
    assert mistake_of_kind("7", "drop_digit", rng) is None
    with pytest.raises(ValueError, match="unknown mistake"):
        mistake_of_kind("46", "typo", rng)
    assert len(MISTAKES) == 7


def test_training_pairs_show_the_right_answer_in_both_positions():
    rows = both_orders([("1+2=", "3", "4"), ("5+5=", "10", "11")], "{prompt}|{a}|{b}")
    assert rows == [("1+2=|3|4", "A"), ("1+2=|4|3", "B"), ("5+5=|10|11", "A"), ("5+5=|11|10", "B")]


# ---------------------------------------------------------------- the worker, stand-in judge
class BiasedJudge:
    """Stands in for LLMJudge: 0.8 for whichever answer is shown first, NaN (no verdict) when
    the prompt is 'junk'. Records what it was asked and whether it was shut down."""

    instances: list[BiasedJudge] = []

    def __init__(self, cfg, seed: int) -> None:
        self.asked: list[tuple[list[str], list[str]]] = []
        self.closed = False
        BiasedJudge.instances.append(self)

    def ask(self, prompts, a, b):
        self.asked.append((list(a), list(b)))
        probs = np.array([math.nan if p == "junk" else 0.8 for p in prompts])
        return probs, {"judge/unparsed": float(np.isnan(probs).sum())}

    def shutdown(self) -> None:
        self.closed = True


@pytest.fixture
def stand_in(monkeypatch, tmp_path):
    import rlhf.rewards.llm_judge as llm_judge

    monkeypatch.setattr(llm_judge, "LLMJudge", BiasedJudge)
    BiasedJudge.instances.clear()

    def make(*overrides: str):
        from rlhf.workers.reward import RewardWorker

        args = ["reward.judge.kind=llm", f"reward.judge.llm.path={tmp_path}", *overrides]
        return RewardWorker(load_config(None, args), 0)

    return make


def test_worker_asks_both_orders_and_handles_no_answer(stand_in):
    prompts, right, wrong = ["1+2=", "junk"], ["3", "x"], ["4", "y"]
    worker = stand_in()
    probs, metrics = worker.judge(prompts, right, wrong, {})
    judge = BiasedJudge.instances[-1]
    assert judge.asked == [(right, wrong), (wrong, right)]
    assert probs[0] == pytest.approx(0.5)  # (0.8 + (1 - 0.8)) / 2: position bias cancels
    assert math.isnan(probs[1])  # no verdict: no answer (reward.on_error=drop)
    assert metrics["judge/order_disagreement"] == pytest.approx(0.6)
    assert metrics["judge/unparsed"] == 2 and metrics["judge/no_answer"] == 1
    worker.shutdown()
    assert judge.closed and worker.llm_judge is None

    once, _ = stand_in("reward.judge.both_orders=false").judge(prompts, right, wrong, {})
    assert once[0] == pytest.approx(0.8) and math.isnan(once[1])
    zero, _ = stand_in("reward.on_error=zero").judge(prompts, right, wrong, {})
    np.testing.assert_allclose(zero, [0.5, 0.5])
    with pytest.raises(JudgeError, match="pair 1"):
        stand_in("reward.on_error=raise").judge(prompts, right, wrong, {})


# ---------------------------------------------------------------- end to end (slow, long)
# Two tiny judges, both the default policy (cached by prepare_model) fine-tuned on the default
# template by train_addition_judge:
# - the CI tier's, 60 steps (about 20 s on 2 cores): it answers with a letter on every pair
#   (measured: 512 of 512, order disagreement 0.004) but barely checks sums; enough for the
#   mechanics of the vLLM judge (both orders, A/B probabilities, swapping);
# - the long tier's, the defaults (300 steps, about 2 minutes on 2 cores): its agreement with
#   the exact reward, measured on the pairs below, is in docs/algorithms.md.
FORMAT_STEPS = 60
MIN_AGREEMENT = 0.55


def _train_judge(folder, steps: int) -> str:
    import torch

    from rlhf.rewards.judge_training import train_addition_judge

    # Every core (pytest runs nothing else meanwhile): on 2 cores, 2 threads took 0.36 s a
    # step against 0.59 s with 1, with the same losses.
    threads = torch.get_num_threads()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    try:
        stats = train_addition_judge(load_config(None, []), folder, steps=steps)
    finally:
        torch.set_num_threads(threads)
    print(f"\ntiny judge trained ({steps} steps): {stats}")
    return str(folder)


def _judge_worker(path: str):
    from rlhf.workers.reward import RewardWorker

    cfg = load_config(None, ["reward.judge.kind=llm", f"reward.judge.llm.path={path}"])
    return RewardWorker(cfg, 0)


@pytest.fixture(scope="module")
def format_worker(tmp_path_factory):
    worker = _judge_worker(_train_judge(tmp_path_factory.mktemp("judge60") / "m", FORMAT_STEPS))
    yield worker
    worker.shutdown()


@pytest.fixture(scope="module")
def trained_worker(tmp_path_factory):
    worker = _judge_worker(_train_judge(tmp_path_factory.mktemp("judge") / "model", 300))
    yield worker
    worker.shutdown()


def held_out_pairs(seed: int) -> tuple[list[str], list[str], list[str], np.ndarray, list[str]]:
    """Every held-out prompt of the default task with its right answer against one mistake of
    each kind (kinds impossible for that answer are left out): prompts, a, b, whether a is
    the right one (a random half), and the kind of mistake."""
    from rlhf.data.tasks import make_task

    task = make_task(load_config(None, []).task)
    rng = np.random.default_rng(seed)
    prompts, rights, wrongs, kinds = [], [], [], []
    for p in task.eval_prompts:
        right = str(p.columns["answer"])
        for kind in MISTAKES:
            wrong = mistake_of_kind(right, kind, rng)
            if wrong is not None:
                prompts.append(p.text)
                rights.append(right)
                wrongs.append(wrong)
                kinds.append(kind)
    a_right = rng.random(len(prompts)) < 0.5
    a = [r if first else w for r, w, first in zip(rights, wrongs, a_right, strict=True)]
    b = [w if first else r for r, w, first in zip(rights, wrongs, a_right, strict=True)]
    return prompts, a, b, a_right, kinds


@pytest.mark.long
def test_tiny_judge_agrees_with_the_exact_reward_on_held_out_prompts(trained_worker):
    prompts, a, b, a_right, kinds = held_out_pairs(seed=1)
    probs, metrics = trained_worker.judge(prompts, a, b, {})
    valid = probs[np.isfinite(probs)]
    assert ((valid >= 0.0) & (valid <= 1.0)).all()
    # P > 1/2 must pick the right answer; no answer or a tie counts as a miss
    hits = np.where(a_right, probs > 0.5, probs < 0.5)
    agreement = float(hits.mean())
    by_kind = {k: float(hits[np.array(kinds) == k].mean()) for k in MISTAKES}
    print(
        f"\nLLM judge on {len(prompts)} held-out pairs: agreement with the exact reward "
        f"{agreement:.3f}, order disagreement {metrics['judge/order_disagreement']:.3f}, "
        f"no answer {metrics['judge/no_answer']:.0f}; by mistake: "
        + ", ".join(f"{k} {v:.2f}" for k, v in by_kind.items())
    )
    # A coin agrees with probability 1/2: over these ~3,580 pairs its agreement has sd
    # sqrt(0.25 / 3580) = 0.0084, so MIN_AGREEMENT = 0.55 is 6 sd above it. The judge this
    # test trains measured 0.66; six trainings (3 seeds x 2 learning rates) gave 0.57 to
    # 0.68 on 512 such pairs, all above the bar (docs/algorithms.md, "Judges").
    assert agreement > MIN_AGREEMENT
    assert 0.0 <= metrics["judge/order_disagreement"] <= 1.0
    assert metrics["judge/pairs"] == len(prompts)


@pytest.mark.slow
def test_swapping_the_answers_gives_one_minus_p(format_worker):
    prompts, a, b, _, _ = (x[:512] for x in held_out_pairs(seed=2))
    p_ab, _ = format_worker.judge(prompts, a, b, {})
    p_ba, _ = format_worker.judge(prompts, b, a, {})
    assert np.isfinite(p_ab).mean() > 0.9  # the check below is about answers, not NaNs
    # Both calls generate from the same two sets of judge inputs (greedy), so each order's
    # P is the same number in both and the averages are exact complements; 1e-6 leaves room
    # for float32 log-probs from batches scheduled differently (a few ulps of values <= 1).
    np.testing.assert_allclose(p_ba, 1.0 - p_ab, atol=1e-6)
    # the check can fail: a single order is not symmetric (the judge has a position bias)
    single = [format_worker.llm_judge.ask(prompts, x, y)[0] for x, y in ((a, b), (b, a))]
    assert np.nanmax(np.abs(single[1] - (1.0 - single[0]))) > 1e-3
