"""Built-in tasks: prompts with the dataset columns reward functions receive.

A task gives a deterministic train/eval split, the text corpus the default tokenizer is
trained on, supervised examples for the warm start, and the completion budget
(`max_new_tokens`) its answers need.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rlhf.config import ConfigError, TaskConfig
from rlhf.data.chat import render_chat
from rlhf.data.word_problems import PRACTICE, practice_lines, without_background
from rlhf.data.word_problems import generate as generate_word_problems
from rlhf.types import Prompt


class Task(ABC):
    name: str
    default_reward: str  # a key of rlhf.rewards.builtin.BUILTIN_REWARDS
    train_prompts: list[Prompt]
    eval_prompts: list[Prompt]
    # The warm start's loss weight on prompt tokens (completion tokens weigh 1): 0 trains on
    # answers only; above 0 it also models the prompt, as pretraining would.
    warm_start_prompt_weight: float = 0.0
    # Raised when supervised_examples() or corpus() change what they return: a version above
    # 1 enters the default model's cache key (rlhf.models.default_model.cache_key), so a
    # model warm-started on the old examples is not reused.
    examples_version: int = 1

    @property
    @abstractmethod
    def max_new_tokens(self) -> int:
        """Tokens a complete answer takes, EOS included (with single-digit tokens)."""

    @abstractmethod
    def target(self, prompt: Prompt) -> str:
        """The reference completion (without EOS), for the supervised warm start."""

    def supervised_examples(self) -> list[tuple[Prompt, str | list[str]]]:
        """(prompt, completion) pairs on the training prompts; the trainer tokenizes the
        prompt as a run does (`rlhf.data.chat.prompt_ids`) and appends EOS. A completion given
        as pieces (an episode's turns and observations) is tokenized piece by piece, as the
        episode runner builds it."""
        return [(p, self.target(p)) for p in self.train_prompts]

    def corpus(self) -> list[str]:
        """Text the default tokenizer is trained on: every prompt with its answer."""
        return [p.text + self.target(p) for p in self.train_prompts + self.eval_prompts]

    def batch_at(self, it: int, k: int, seed: int) -> tuple[list[Prompt], dict[str, float]]:
        """Iteration `it`'s `k` prompts: the training prompts in epochs, each a new shuffle
        seeded by (`seed`, epoch), so every prompt comes once per epoch and a run resumed at
        `it` gets the same batches. Also data/epoch and data/position (that epoch's prompts
        used before this batch)."""
        n = len(self.train_prompts)
        out = []
        for g in range(it * k, (it + 1) * k):
            epoch, pos = divmod(g, n)
            out.append(self.train_prompts[self._epoch_order(seed, epoch)[pos]])
        epoch, pos = divmod(it * k, n)
        return out, {"data/epoch": float(epoch), "data/position": float(pos)}

    def _epoch_order(self, seed: int, epoch: int) -> np.ndarray:
        cached = getattr(self, "_order", None)
        if cached is None or cached[0] != (seed, epoch):
            order = np.random.default_rng([seed, epoch]).permutation(len(self.train_prompts))
            self._order = ((seed, epoch), order)  # batches walk one epoch after another
        return self._order[1]

    def sample_train(self, k: int, seed: int) -> list[Prompt]:
        """k distinct training prompts, a pure function of the seed (runs can resume exactly)."""
        rng = np.random.default_rng(seed)
        k = min(k, len(self.train_prompts))
        idx = rng.choice(len(self.train_prompts), size=k, replace=False)
        return [self.train_prompts[i] for i in idx]


class AdditionTask(Task):
    """'a+b=' -> the decimal sum, for 0 <= a, b <= max_operand. Reward: exact sum = 1.

    All (a, b) pairs are shuffled with `seed`; the first tenth (at most 512) is held out for
    evaluation, and the next `num_prompts` are the training prompts, so the two never overlap.
    """

    name = "addition"
    default_reward = "addition_exact"
    max_eval = 512

    def __init__(self, cfg: TaskConfig) -> None:
        n = cfg.max_operand + 1
        a, b = np.divmod(np.arange(n * n), n)
        order = np.random.default_rng(cfg.seed).permutation(n * n)
        n_eval = min(self.max_eval, (n * n) // 10)
        if n * n - n_eval < 1:
            raise ConfigError(f"task.max_operand={cfg.max_operand} leaves no training prompts")
        self.eval_prompts = [self._prompt(a[i], b[i]) for i in order[:n_eval]]
        self.train_prompts = [
            self._prompt(a[i], b[i]) for i in order[n_eval : n_eval + cfg.num_prompts]
        ]
        self._answer_digits = len(str(2 * cfg.max_operand))

    @staticmethod
    def _prompt(a: int, b: int) -> Prompt:
        a, b = int(a), int(b)
        return Prompt(text=f"{a}+{b}=", columns={"answer": str(a + b)})

    @property
    def max_new_tokens(self) -> int:
        return self._answer_digits + 1  # digits are single tokens; +1 for EOS

    def target(self, prompt: Prompt) -> str:
        return str(prompt.columns["answer"])


class WordProblemsTask(Task):
    """Multi-step arithmetic word problems as chat prompts, GSM8K's shape
    (`rlhf.data.word_problems`): the `answer` column is the worked solution ending
    '#### <number>', scored by `final_number`.

    The first `max_eval` distinct problems of the seed's stream are held out and the next
    `num_prompts` are the training prompts (problems are distinct by question, so the two never
    overlap).
    """

    name = "word_problems"
    default_reward = "final_number"
    max_eval = 512
    corpus_problems = 4096
    # Whole conversations: modelling the prompt too (its names and things recur in it) is
    # what teaches a model from scratch to copy from its context.
    warm_start_prompt_weight = 1.0
    practice_row = 24  # computations per arithmetic-practice row: about 300 tokens
    # Of the warm start's problems, this share goes without its background paragraph: such a
    # row costs about half a full one (the solution's reach to each number is the same), so a
    # step sees more problems. Measured: copying numbers from the prompt came within the same
    # wall time as whole prompts only gave names (benchmarks/results/word_problems.md).
    warm_start_short_fraction = 0.75

    def __init__(self, cfg: TaskConfig) -> None:
        self.seed = cfg.seed
        problems = generate_word_problems(self.max_eval + cfg.num_prompts, cfg.seed)
        prompts = [p.prompt() for p in problems]
        self.eval_prompts = prompts[: self.max_eval]
        self.train_prompts = prompts[self.max_eval :]

    @property
    def max_new_tokens(self) -> int:
        return 256  # the design's longest answer, EOS included (measured: about 150)

    def target(self, prompt: Prompt) -> str:
        return str(prompt.columns["answer"])

    def supervised_examples(self) -> list[tuple[Prompt, str]]:
        """The training problems' worked solutions (`warm_start_short_fraction` of them without
        their background), and arithmetic practice: one row per two problems of
        `practice_row` computations drawn from those solutions, one a line. The practice
        stands in for the arithmetic a pretrained model brings: a row of it holds
        six times the computations of a solution at the same cost, and without it an 11M
        model spent its first hundreds of steps at chance on every digit it had to compute."""
        rng = np.random.default_rng([self.seed, 1])
        examples = [
            (self._short(p) if rng.random() < self.warm_start_short_fraction else p, completion)
            for p, completion in super().supervised_examples()
        ]
        computations = [line for p in self.train_prompts for line in practice_lines(self.target(p))]
        for _ in range(len(self.train_prompts) // 2):
            picked = rng.choice(len(computations), self.practice_row)
            examples.append((PRACTICE, "\n".join(computations[i] for i in picked)))
        return examples

    @staticmethod
    def _short(prompt: Prompt) -> Prompt:
        messages = without_background(prompt.messages or [])
        return Prompt(text=messages[-1]["content"], columns=prompt.columns, messages=messages)

    def corpus(self) -> list[str]:
        """Prompts as the chat template renders them, and answers, as separate texts (a run
        tokenizes them separately: the prompt ends at 'assistant: '), of the held-out problems
        and the first training ones: the templates' words are all there well before
        `corpus_problems`, and training the tokenizer on 20k problems took a minute."""
        out = []
        for p in (self.eval_prompts + self.train_prompts)[: self.corpus_problems]:
            out += [render_chat(p.messages or []), self.target(p)]
        return out


class MultiplicationTask(Task):
    """'a*b=' for a of 3 digits and b of 2: a product a tiny model cannot compute in its head,
    for the built-in calculator (`rollout.environment: calculator`, launch/configs/calculator.yaml).
    The `answer` column is the product; the calculator scores the episode's final number.

    The warm start teaches how a call goes, not that calling pays: `warm_start_tool_fraction`
    of the examples are whole episodes from the prompt (`<calc>a*b</calc>`, the calculator's
    `<result>p</result>`, `p`), so the policy starts out calling in about that share of its
    samples; `warm_start_call_fraction` are the same episodes from a prompt that already ends
    in `<calc>` (the operands copied, the result copied back: what a call needs once made,
    learnt without raising how often one is made); the rest are the product written directly,
    which the model cannot learn. So before RL exact match is near 0, and what RL has to find
    is that calling the tool pays.
    Held out: the first `max_eval` pairs of the seed's shuffle; training: the next `num_prompts`.
    """

    name = "multiplication"
    default_reward = "final_number"
    max_eval = 512
    OPEN = "<calc>"  # the calculator's call tag (rlhf.envs.builtin.Calculator)
    warm_start_tool_fraction = 0.05
    warm_start_call_fraction = 0.3
    examples_version = 2  # 2: the episodes from a prompt ending in '<calc>'

    def __init__(self, cfg: TaskConfig) -> None:
        self.seed = cfg.seed
        a, b = np.divmod(np.arange(900 * 90), 90)
        order = np.random.default_rng(cfg.seed).permutation(a.size)
        pairs = [(int(a[i]) + 100, int(b[i]) + 10) for i in order]
        self.eval_prompts = [self._prompt(x, y) for x, y in pairs[: self.max_eval]]
        self.train_prompts = [
            self._prompt(x, y) for x, y in pairs[self.max_eval : self.max_eval + cfg.num_prompts]
        ]

    @staticmethod
    def _prompt(a: int, b: int) -> Prompt:
        return Prompt(text=f"{a}*{b}=", columns={"answer": str(a * b)})

    @property
    def max_new_tokens(self) -> int:
        return 24  # one turn: '<calc>' + 6 characters + '</calc>' at most, or 5 digits + EOS

    def target(self, prompt: Prompt) -> str:
        return str(prompt.columns["answer"])

    @staticmethod
    def episode(prompt: Prompt) -> list[str]:
        """A whole calculator episode's pieces: the policy's call, the calculator's answer,
        the policy's final answer (each tokenized on its own, as a run does)."""
        product = str(prompt.columns["answer"])
        return [
            f"{MultiplicationTask.OPEN}{prompt.text[:-1]}</calc>",
            f"<result>{product}</result>",
            product,
        ]

    def supervised_examples(self) -> list[tuple[Prompt, str | list[str]]]:
        rng = np.random.default_rng([self.seed, 2])
        out: list[tuple[Prompt, str | list[str]]] = []
        for p in self.train_prompts:
            u = rng.random()
            if u < self.warm_start_tool_fraction:
                out.append((p, self.episode(p)))
            elif u < self.warm_start_tool_fraction + self.warm_start_call_fraction:
                call, *rest = self.episode(p)
                opened = Prompt(text=p.text + self.OPEN, columns=p.columns)
                out.append((opened, [call.removeprefix(self.OPEN), *rest]))
            else:
                out.append((p, self.target(p)))
        return out

    def corpus(self) -> list[str]:
        prompts = self.train_prompts + self.eval_prompts
        return [p.text + self.target(p) for p in prompts] + [
            "".join(self.episode(p)) for p in prompts[:2000]
        ]


class GuessNumberTask(Task):
    """Guess a secret whole number from 1 to `HIGHEST`, told " higher" or " lower" after each
    wrong guess (the built-in `guess_number` environment, launch/configs/guess_number.yaml).
    Every prompt reads the same; its `answer` column is the secret (so a first guess's greedy
    accuracy, the warm start's report, is `final_number`'s). A turn is a guess and ';'
    (the environment's stop string), so an episode reads 'guess 1-15: 8; lower 3; higher 5;'.

    The warm start plays the game without a plan: each guess drawn at random among the numbers
    the answers so far leave possible. That solves every game, in ~4.1 turns on average where
    halving the range takes 3.3 (at most 4): what RL has to learn, rewarded by
    `rollout.turn_rewards: discounted`, is to guess nearer the middle, so that the number of
    turns to solve falls. Held out: `max_eval` games with their own seeded secrets.
    """

    name = "guess_number"
    default_reward = "final_number"  # the warm start's report: a first guess that solves
    HIGHEST = 15
    max_eval = 512

    def __init__(self, cfg: TaskConfig) -> None:
        self.seed = cfg.seed
        secrets = np.random.default_rng([cfg.seed, 3]).integers(
            1, self.HIGHEST + 1, size=self.max_eval + cfg.num_prompts
        )
        games = [self._prompt(int(x)) for x in secrets]
        self.eval_prompts, self.train_prompts = games[: self.max_eval], games[self.max_eval :]

    @classmethod
    def _prompt(cls, secret: int) -> Prompt:
        return Prompt(text=f"guess 1-{cls.HIGHEST}:", columns={"answer": str(secret)})

    @property
    def max_new_tokens(self) -> int:
        return 4  # one turn: ' ', two digits, ';'

    def target(self, prompt: Prompt) -> str:
        return f" {prompt.columns['answer']};"  # the one-turn solve, for the corpus

    @classmethod
    def random_game(cls, secret: int, rng: np.random.Generator) -> list[str]:
        """An episode's pieces, guesses drawn at random among the numbers still possible:
        ' 8;', ' lower', ' 3;', ' higher', ' 5;' (the guesses tokenized apart from the
        answers, as a run does)."""
        low, high, pieces = 1, cls.HIGHEST, []
        while True:
            guess = int(rng.integers(low, high + 1))
            pieces.append(f" {guess};")
            if guess == secret:
                return pieces
            if guess < secret:
                pieces.append(" higher")
                low = guess + 1
            else:
                pieces.append(" lower")
                high = guess - 1

    def supervised_examples(self) -> list[tuple[Prompt, str | list[str]]]:
        rng = np.random.default_rng([self.seed, 4])
        return [
            (p, self.random_game(int(str(p.columns["answer"])), rng)) for p in self.train_prompts
        ]

    def corpus(self) -> list[str]:
        rng = np.random.default_rng([self.seed, 5])
        return [p.text + "".join(self.random_game(int(str(p.columns["answer"])), rng))
                for p in self.train_prompts[:2000]] + [" a number?"]  # fmt: skip


TASKS: dict[str, type[Task]] = {
    AdditionTask.name: AdditionTask,
    WordProblemsTask.name: WordProblemsTask,
    MultiplicationTask.name: MultiplicationTask,
    GuessNumberTask.name: GuessNumberTask,
}


def make_task(cfg: TaskConfig) -> Task:
    try:
        cls = TASKS[cfg.name]
    except KeyError:
        raise ConfigError(
            f"task.name {cfg.name!r} is unknown; allowed: {', '.join(TASKS)}"
        ) from None
    return cls(cfg)
