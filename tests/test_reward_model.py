"""Reward models: the Bradley-Terry loss, preference pairs, the scorer the reward workers run,
the config, and (slow) the pipeline `rlhf train-rm` -> GRPO against the trained model."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from rlhf.config import ConfigError, TaskConfig, load_config
from rlhf.data.tasks import make_task
from rlhf.models.reward_model import (
    RewardModelError,
    ScalarReward,
    encode,
    init_from_folder,
    load_reward_model,
    pad_id_of,
    score_rows,
)
from rlhf.rewards.bradley_terry import bradley_terry_loss, pair_accuracy
from rlhf.rewards.builtin import addition_exact
from rlhf.rewards.pairs import (
    WRONG_ANSWERS,
    PairsFileError,
    read_pairs,
    sampled_pairs,
    split_by_prompt,
    task_pairs,
    wrong_answers,
)
from rlhf.rewards.reward_model_scorer import RewardModelScorer
from rlhf.rewards.scoring import NamedReward, score_batch
from rlhf.rewards.train_rm import pair_micro_batches
from tests.rows import tiny_model
from tests.run_options import NO_DASHBOARD, ONE_EACH


# ---------------------------------------------------------------- Bradley-Terry
def test_bradley_terry_loss_matches_closed_form_values():
    chosen = torch.tensor([0.0, 1.0, 3.0, -2.0, 40.0])
    rejected = torch.tensor([0.0, 0.0, 1.0, 2.0, 0.0])
    # -log sigmoid(d) = log(1 + e^-d): d = 0, 1, 2, -4, 40
    want = [math.log(2), math.log1p(math.exp(-1)), math.log1p(math.exp(-2)), 4 + math.log1p(math.exp(-4)), math.exp(-40)]  # fmt: skip
    for i, w in enumerate(want):
        got = bradley_terry_loss(chosen[i : i + 1], rejected[i : i + 1]).item()
        assert got == pytest.approx(w, rel=1e-6), i
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(sum(want) / 5, rel=1e-6)
    # the gradient w.r.t. r_chosen is -sigmoid(-d) / n: pushes chosen up, rejected down
    c = chosen.clone().requires_grad_(True)
    bradley_terry_loss(c, rejected).backward()
    d = chosen - rejected
    torch.testing.assert_close(c.grad, -torch.sigmoid(-d) / 5)


def test_pair_accuracy_counts_strict_wins_only():
    assert pair_accuracy([1.0, 2.0, 0.5, 3.0], [0.0, 2.0, 0.7, -1.0]) == 0.5
    assert math.isnan(pair_accuracy([], []))
    with pytest.raises(ValueError):
        pair_accuracy([1.0], [])


# ---------------------------------------------------------------- pairs
def test_pair_micro_batches_keep_pairs_whole_within_both_limits():
    chosen = [[1] * 5, [1] * 2, [1] * 9, [1] * 3]
    rejected = [[1] * 4, [1] * 6, [1] * 1, [1] * 3]  # pairs of 5, 6, 9 and 3 tokens
    # 24 slots, 2 rows a pair: [9] (18), [6, 5] (4 x 6 = 24), [3]; longest first
    assert pair_micro_batches([3, 0, 2, 1], chosen, rejected, 64, 24) == [[2], [1, 0], [3]]
    # the pair limit alone; a pair over the budget goes alone
    assert pair_micro_batches([3, 0, 2, 1], chosen, rejected, 1, None) == [[2], [1], [0], [3]]
    assert pair_micro_batches([2, 3], chosen, rejected, 64, 10) == [[2], [3]]


def test_wrong_answers_are_wrong_distinct_and_of_every_kind():
    rng = np.random.default_rng(0)
    kinds_seen = set()
    for answer in ["0", "7", "10", "58", "100", "198"]:
        for _ in range(30):
            got = wrong_answers(answer, 3, rng)
            texts = [t for _, t in got]
            assert len(got) == 3 and len(set(texts)) == 3
            for kind, text in got:
                kinds_seen.add(kind)
                # wrong by the task's own reward (which strips white space)
                assert addition_exact([""], [text], [answer]) == [0.0], (answer, kind, text)
                if kind != "non_number":
                    assert text.isdigit() and (text == "0" or not text.startswith("0"))
                if kind == "off_by_one":
                    assert abs(int(text) - int(answer)) == 1
                elif kind == "off_by_ten":
                    assert abs(int(text) - int(answer)) == 10
                elif kind == "wrong_digit":
                    assert len(text) == len(answer)
                    assert sum(a != b for a, b in zip(text, answer, strict=True)) == 1
                elif kind == "dropped_digit":
                    assert len(text) == len(answer) - 1
                elif kind == "extra_digit":
                    assert len(text) == len(answer) + 1
                else:
                    assert not text.isdigit()
    assert kinds_seen == set(WRONG_ANSWERS)


def test_task_pairs_prefer_the_right_answer_on_disjoint_prompts():
    task = make_task(TaskConfig(max_operand=19, num_prompts=300))
    train, held = task_pairs(task, rejected_per_prompt=2, seed=3)
    assert len(train) == 2 * len(task.train_prompts) and len(held) == 2 * len(task.eval_prompts)
    for p in train + held:
        a, b = (int(x) for x in p.prompt.removesuffix("=").split("+"))
        assert p.chosen == str(a + b)
        assert addition_exact([p.prompt], [p.rejected], [p.chosen]) == [0.0]
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    assert {p.prompt for p in held} == {p.text for p in task.eval_prompts}
    # a pure function of the seed
    assert task_pairs(task, 2, seed=3) == (train, held)
    assert task_pairs(task, 2, seed=4)[0] != train


def _write(tmp_path, lines: list[str]):
    f = tmp_path / "pairs.jsonl"
    f.write_text("\n".join(lines) + "\n")
    return f


def test_sampled_pairs_keep_each_distinct_wrong_answer_once():
    prompts = ["1+2=", "1+2=", "1+2=", "1+2=", "5+5="]
    answers = ["3", "3", "3", "3", "10"]
    samples = ["3", " 4", "4", "x7", "10"]  # right, wrong twice (once with a space), junk, right
    pairs = sampled_pairs(prompts, answers, samples)
    assert [(p.prompt, p.chosen, p.rejected, p.kind) for p in pairs] == [
        ("1+2=", "3", "4", "policy_sample"),
        ("1+2=", "3", "x7", "policy_sample"),
    ]


def test_pairs_file_is_read_and_split_by_prompt(tmp_path):
    lines = [
        json.dumps({"prompt": f"q{i % 10}", "chosen": f"good{i}", "rejected": f"bad{i}", "x": 1})
        for i in range(40)
    ]
    f = _write(tmp_path, lines[:20] + [""] + lines[20:])  # a blank line is skipped
    pairs = read_pairs(f)
    assert len(pairs) == 40 and pairs[0].chosen == "good0" and pairs[39].rejected == "bad39"
    train, held = split_by_prompt(pairs, 0.2, seed=0)
    assert len({p.prompt for p in held}) == 2 and len(held) == 8 and len(train) == 32
    assert not {p.prompt for p in train} & {p.prompt for p in held}
    with pytest.raises(PairsFileError, match="leaves no prompt to train on"):
        split_by_prompt(pairs[:4], 0.9, seed=0)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("{not json", r"line 2: not valid JSON"),
        ('["prompt", "chosen"]', r"line 2: expected an object.*got list"),
        ('{"prompt": "p", "chosen": "a"}', r"line 2: missing key 'rejected'"),
        ('{"prompt": "p", "chosen": 1, "rejected": "b"}', r"line 2: 'chosen' must be a string"),
        ('{"prompt": "p", "chosen": "a", "rejected": "a"}', r"line 2: .*the same text"),
    ],
)
def test_pairs_file_errors_name_file_and_line(tmp_path, line, expected):
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    f = _write(tmp_path, [good, line, good])
    with pytest.raises(PairsFileError, match=rf"pairs\.jsonl {expected}"):
        read_pairs(f)


def test_pairs_file_missing_or_empty(tmp_path):
    with pytest.raises(PairsFileError, match="does not exist"):
        read_pairs(tmp_path / "nope.jsonl")
    with pytest.raises(PairsFileError, match="holds no pairs"):
        read_pairs(_write(tmp_path, ["", "  "]))


# ---------------------------------------------------------------- the scorer
@pytest.fixture(scope="module")
def rm_folder(tmp_path_factory) -> str:
    """A one-label classifier from a tiny policy, with a random (non-zero) score head."""
    from transformers import AutoTokenizer

    root = tmp_path_factory.mktemp("rm")
    policy = tiny_model(root / "policy", 32, 2, 1, 64)
    tokenizer = AutoTokenizer.from_pretrained(policy)
    model = init_from_folder(policy, pad_id_of(tokenizer))
    torch.manual_seed(1)
    with torch.no_grad():
        model.classifier.score.weight.normal_()
    model.classifier.save_pretrained(root / "rm")
    tokenizer.save_pretrained(root / "rm")
    return str(root / "rm")


PROMPTS = ["12+30=", "7+5=", "the quick brown fox ", "1+1="]
COMPLETIONS = ["42", "12", "jumps over the lazy dog", ""]


def test_scorer_gives_a_sample_the_same_score_alone_and_in_a_padded_batch(rm_folder):
    torch.set_num_threads(1)  # one thread: a fixed summation order per row
    scorer = RewardModelScorer(rm_folder, batch_size=8)
    batch = scorer(PROMPTS, COMPLETIONS)
    alone = [scorer([p], [c])[0] for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    lengths = [len(r) for r in encode(scorer.tokenizer, PROMPTS, COMPLETIONS, 256)]
    assert len(set(lengths)) == len(lengths)  # every row but the longest is padded
    # Right padding changes no real token's computation, only the matmul shapes, so batched
    # kernels may add the same float32 terms in another order. Each rounding is off by at
    # most eps (float32: 1.2e-7) relative; a score passes through one layer of 32-wide dot
    # products and a 32-wide head, so a reordering moves it by a few eps times the size of
    # the values involved (seen: 3 eps). 64 eps (7.6e-6) times (1 + |score|) leaves room
    # for that, while reading any other position (a pad) moves scores by O(0.1 to 1).
    eps = float(np.finfo(np.float32).eps)
    for a, b in zip(alone, batch, strict=True):
        assert a == pytest.approx(b, abs=64 * eps * (1 + abs(a)))
    # the rows really differ, and differ from a pad position's score
    assert len({round(s, 3) for s in batch}) == len(batch)


def test_scorer_reads_the_last_real_token_like_hf_does_unpadded(rm_folder):
    from transformers import AutoModelForSequenceClassification

    scorer = RewardModelScorer(rm_folder)
    hf = AutoModelForSequenceClassification.from_pretrained(rm_folder).eval()
    rows = encode(scorer.tokenizer, PROMPTS, COMPLETIONS, 256)
    with torch.no_grad():
        want = [hf(input_ids=torch.tensor([r])).logits[0, 0].item() for r in rows]
    got = scorer(PROMPTS, COMPLETIONS)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the tokens are the prompt's as the policy saw them, then the completion's
    p_ids = scorer.tokenizer(PROMPTS[0]).input_ids
    assert rows[0][: len(p_ids)] == p_ids and len(rows[0]) > len(p_ids)


def test_scorer_runs_as_a_reward_function_in_score_batch(rm_folder):
    scorer = RewardModelScorer(rm_folder)
    direct = scorer(PROMPTS, COMPLETIONS)
    rewards, metrics = score_batch(
        [NamedReward("reward.models[0]:model0", scorer, 2.0)],
        PROMPTS,
        COMPLETIONS,
        {"answer": ["42", "12", "x", "2"]},
        "drop",
    )
    np.testing.assert_allclose(rewards, 2.0 * np.array(direct), rtol=1e-6)
    assert metrics["reward/model0/mean"] == pytest.approx(np.mean(direct), rel=1e-6)
    assert metrics["reward/dropped"] == 0


def test_an_unusable_folder_is_an_error_naming_the_field(tmp_path, rm_folder):
    from rlhf.workers.reward import reward_models

    policy = tiny_model(tmp_path / "policy", 32, 2, 1, 64)
    cases = [
        (str(tmp_path / "missing"), "does not exist"),
        (str(tmp_path), "no config.json"),
        (policy, "not a one-label sequence-classification model"),
    ]
    for path, why in cases:
        cfg = load_config(None, [f"reward.models=[{{path: {rm_folder}}}, {{path: {path}}}]"])
        with pytest.raises(RewardModelError, match=rf"reward\.models\[1\]\.path: .*{why}"):
            reward_models(cfg)
    cfg = load_config(None, [f"reward.models=[{{path: {rm_folder}, weight: 0.5}}]"])
    (model,) = reward_models(cfg)
    assert model.weight == 0.5 and isinstance(model.fn.model, ScalarReward)


# ---------------------------------------------------------------- config
def test_identity_layers_leave_the_scores_unchanged_until_trained(rm_folder, tmp_path):
    """The added layers' output projections are zero, so they add exactly 0 to the residual
    stream: every score is bit-identical, and the saved deeper model loads back as such."""
    from rlhf.models.grow import add_identity_layers

    model, tokenizer = load_reward_model(rm_folder, "f")
    rows = encode(tokenizer, ["12+34=", "5+5="], ["46", "1"], 64)
    pad = pad_id_of(tokenizer)
    before = score_rows(model, rows, pad, batch_size=2)
    depth = model.classifier.config.num_hidden_layers
    add_identity_layers(model.classifier, 2, seed=0)
    assert len(model.classifier.model.layers) == depth + 2
    assert score_rows(model, rows, pad, batch_size=2) == before
    model.classifier.save_pretrained(tmp_path / "deeper")
    tokenizer.save_pretrained(tmp_path / "deeper")
    reloaded, _ = load_reward_model(tmp_path / "deeper", "f")
    assert reloaded.classifier.config.num_hidden_layers == depth + 2
    assert score_rows(reloaded, rows, pad, batch_size=2) == before
    # and the new layers can change them once trained (here: a non-zero output projection)
    with torch.no_grad():
        model.classifier.model.layers[-1].mlp.down_proj.weight.normal_()
    assert score_rows(model, rows, pad, batch_size=2) != before


def test_config_needs_a_function_or_a_model_and_names_the_fields():
    with pytest.raises(ConfigError, match=r"reward\.functions and reward\.models are both empty"):
        load_config(None, ["reward.functions=[]"])
    with pytest.raises(ConfigError, match=r"reward\.models\.0\.path: Field required"):
        load_config(None, ["reward.models=[{weight: 1}]"])
    with pytest.raises(ConfigError, match=r"reward\.models\.0\.bogus: unknown field"):
        load_config(None, ["reward.models=[{path: x, bogus: 1}]"])
    with pytest.raises(ConfigError, match=r"reward_model_training\.held_out_fraction"):
        load_config(None, ["reward_model_training.held_out_fraction=1"])
    cfg = load_config(None, ["reward.functions=[]", "reward.models=[{path: rm, weight: 2}]"])
    assert cfg.reward.models[0].path == "rm" and cfg.reward.models[0].weight == 2


# ---------------------------------------------------------------- end to end (slow)
# 200 steps at lr 1e-3: held-out pair accuracy 0.775 and 0.786 in two runs, every length/format
# kind >= 0.988 (300 steps gave 0.77 to 0.80: the digit kinds stay near chance at this size).
RM_STEPS = 200
# The CI tier: the policy's own backbone (built and cached by other tests), no extra layers,
# two wrong answers per prompt. The defaults (a backbone warm-started 3000 steps, two extra
# layers, six wrong answers per prompt) take ~10 minutes here: the `long` test runs them.
CHEAP_RM = (
    "reward_model_training.backbone_warm_start_steps=null",
    "reward_model_training.extra_layers=0",
    "reward_model_training.rejected_per_prompt=2",
    "reward_model_training.lr=1e-3",
)
RL_ITERATIONS = 20
EVAL_PROMPTS = 256


def _cli(*args: str, timeout: int) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", *args], capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory) -> tuple[str, dict, str]:
    """`rlhf train-rm` on the embedded task: pairs from the built-in addition task, starting
    from the default warm-started policy (built and cached as `rlhf train` builds it)."""
    from rlhf.rewards.train_rm import METRICS_FILE

    out = tmp_path_factory.mktemp("train-rm") / "rm"
    proc = _cli(
        "train-rm",
        f"reward_model_training.output_dir={out}",
        f"reward_model_training.steps={RM_STEPS}",
        *CHEAP_RM,
        timeout=900,
    )
    return str(out), json.loads((out / METRICS_FILE).read_text()), proc.stdout


@pytest.mark.slow
def test_train_rm_on_the_embedded_task_ranks_held_out_pairs(trained_rm):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rlhf.config import Config
    from rlhf.models.logprobs import pad_rows

    folder, metrics, stdout = trained_rm
    print(stdout[stdout.index("[rlhf] train-rm done") :])
    assert f"held-out pair accuracy: {metrics['held_out_accuracy']:.3f}" in stdout
    by_kind = metrics["held_out_accuracy_by_kind"]
    assert metrics["held_out_pairs"] == 1024 and set(by_kind) == set(WRONG_ANSWERS)
    # Chance is 0.5. Answers of the wrong length or not numbers are told apart from the
    # operands alone: near perfect within these steps (seen: 0.988 to 1.0 on ~170 pairs each,
    # so 0.95 leaves 6 or more pairs of slack per kind). Digit errors need the sum itself; the
    # overall bar 0.7 (seen: 0.775 to 0.786 at 200 steps, 0.77 to 0.80 at 300) is 14 standard errors
    # of a 1024-pair accuracy above chance.
    for kind in ("dropped_digit", "extra_digit", "non_number"):
        assert by_kind[kind] >= 0.95, by_kind
    assert metrics["held_out_accuracy"] >= 0.7, metrics

    # Plain transformers (HF's own last-token pooling, right padding) on the saved folder
    # ranks the held-out pairs as the run reported.
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert model.config.num_labels == 1
    _, held = task_pairs(make_task(Config().task), 2, seed=0)
    pad = tokenizer.pad_token_id

    def scores(texts: list[str]) -> list[float]:
        rows = [tokenizer(t).input_ids for t in texts]
        with torch.no_grad():
            ids, mask = pad_rows(rows, pad)
            return model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()

    chosen = scores([p.prompt + p.chosen for p in held])
    rejected = scores([p.prompt + p.rejected for p in held])
    assert pair_accuracy(chosen, rejected) == pytest.approx(metrics["held_out_accuracy"], abs=2e-3)


@pytest.mark.slow
def test_grpo_against_the_reward_model_alone(trained_rm, tmp_path):
    """GRPO on the default tiny setup with the trained reward model as the only reward: the
    reward workers load it, every iteration is scored by it, and the policy moves towards
    what it rewards. The exact-match accuracy the run measures is reported, not asserted to
    rise: see README ("Reward models") for what this model does not learn."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.config import Config
    from rlhf.models.default_model import prepare_model
    from rlhf.models.generation import greedy_completions

    folder, _, _ = trained_rm
    _cli(
        "train",
        "reward.functions=[]",
        f"reward.models=[{{path: {folder}}}]",
        f"run.iterations={RL_ITERATIONS}",
        *ONE_EACH,  # the topology is not what this checks
        NO_DASHBOARD,
        f"run.output_dir={tmp_path}",
        "run.name=rm",
        "run.progress_bar=false",
        timeout=900,
    )
    run = tmp_path / "rm"
    summary = json.loads((run / "summary.json").read_text())
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == RL_ITERATIONS
    assert all(math.isfinite(r["reward/model0/mean"]) and r["reward/dropped"] == 0 for r in records)
    print(
        "exact match before/after:",
        summary["eval/greedy_reward_before"],
        summary["eval/greedy_reward_after"],
    )

    # Greedy completions on held-out prompts, scored by the reward model, the starting policy
    # against the trained one on the same prompts. A sign test on the prompts whose completion
    # changed: under "no preference" each is scored higher with probability 1/2, so the count
    # scored higher exceeds n/2 by more than 3 binomial standard errors (sqrt(n)/2) only by
    # learning. (The mean difference is heavy-tailed, a few prompts gain 1-2 points: its
    # t-statistic went from 5.7 on one machine to 2.7 on another, while the signs held.)
    prompts = [p.text for p in make_task(Config().task).eval_prompts[:EVAL_PROMPTS]]
    scorer = RewardModelScorer(folder)
    scores, completions = [], []
    for path in (prepare_model(Config()), str(run / "final")):
        policy = AutoModelForCausalLM.from_pretrained(path).eval()
        tokenizer = AutoTokenizer.from_pretrained(path)
        completions.append(greedy_completions(policy, tokenizer, prompts, 4))
        scores.append(np.array(scorer(prompts, completions[-1])))
    diff = scores[1] - scores[0]
    changed = np.array([a != b for a, b in zip(*completions, strict=True)])
    n, higher = int(changed.sum()), int((diff[changed] > 0).sum())
    print(
        f"reward-model score of greedy completions: {scores[0].mean():.3f} -> "
        f"{scores[1].mean():.3f}; {n} of {len(prompts)} changed, {higher} scored higher"
    )
    assert n >= 30, "the policy barely moved"
    assert higher - n / 2 > 3 * math.sqrt(n) / 2


def test_cli_reports_an_unusable_reward_model_before_starting_anything(tmp_path, capsys):
    from rlhf.cli import main

    out = tmp_path / "runs"
    assert main(["train", f"run.output_dir={out}", f"reward.models=[{{path: {tmp_path}}}]"]) == 2
    assert "reward.models[0].path" in capsys.readouterr().err
    assert not out.exists()  # no run folder for a run that never started
    assert main(["train-rm", f"reward_model_training.pairs={tmp_path / 'none.jsonl'}"]) == 2
    assert "none.jsonl' does not exist" in capsys.readouterr().err


# ---------------------------------------------------------------- the whole pipeline (long)
PIPELINE_RL_ITERATIONS = 100
MIN_EXACT_RISE = 0.03


@pytest.mark.long
@pytest.mark.timeout(7200)  # train-rm alone takes 10 to 25 minutes here (plus its backbone)
def test_pipeline_reward_model_then_grpo_raises_exact_match(tmp_path):
    """The issue's pipeline with every default: `rlhf train-rm` (pairs from the task, the
    default backbone and steps), then GRPO against the model alone, the exact-match reward
    only watched (weight 0). Measured (benchmarks/results/reward_model_pipeline.md): held-out
    pair accuracy 0.975; sampled exact match 0.294 over the first 10 iterations -> 0.369 over
    the last 10 (seed 1: 0.277 -> 0.382). The per-iteration means vary (sd 0.03 to 0.046 within each window: new
    prompts every iteration), so the difference of the two window means has a standard error
    of ~0.017; the measured rise is 4.3 of them above no change and 2.6 above
    MIN_EXACT_RISE."""
    from rlhf.rewards.train_rm import METRICS_FILE

    folder = tmp_path / "rm"
    _cli("train-rm", f"reward_model_training.output_dir={folder}", timeout=3600)
    metrics = json.loads((folder / METRICS_FILE).read_text())
    assert metrics["held_out_accuracy"] > 0.9, metrics

    _cli(
        "train",
        "reward.functions=[{name: addition_exact, weight: 0}]",
        f"reward.models=[{{path: {folder}}}]",
        f"run.iterations={PIPELINE_RL_ITERATIONS}",
        f"run.output_dir={tmp_path}",
        "run.name=grpo",
        "run.progress_bar=false",
        timeout=3600,
    )
    records = [
        json.loads(line) for line in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()
    ]
    exact = [r["reward/addition_exact/mean"] for r in records]
    tenth = len(exact) // 10
    first, last = np.mean(exact[:tenth]), np.mean(exact[-tenth:])
    print(f"\nexact match, sampled: {first:.3f} -> {last:.3f}")
    assert last - first > MIN_EXACT_RISE, (first, last)
