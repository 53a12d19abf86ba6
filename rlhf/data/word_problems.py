"""Multi-step arithmetic word problems in GSM8K's shape, generated from templates.

The built-in `word_problems` task is the project's realistic workload that needs no
download: chat prompts (a system message and a user message, rendered by the tokenizer's chat
template) of 150 to 400 tokens, and worked answers of 64 to 256 tokens, one line per step
with its computation, ending `#### <number>` as GSM8K's do, scored by `final_number`.

Why it is built this way:

- A problem is a story about one person and one kind of thing, changed by 2 or 3 operations
  (buying packs of them, getting more, giving some away, losing some, multiplying them, and
  at the end perhaps sharing them equally), then a question. Each operation is one or two
  lines of the worked answer, each with a single `a op b = c`, so a model has to find the
  right numbers in a long prompt and get each small computation right: errors compound over
  the steps, as on GSM8K, and a partly trained model is right on only some problems, which
  leaves reinforcement learning room to raise it.
- A solution's line quotes the words of the event it works on ("She gives 11 shells to the
  teacher, so she has 27 - 11 = 16 shells left."), as worked solutions often do: finding a
  number in the prompt is then matching words already written, which small transformers
  learn early (induction), and the rest of the budget goes to the arithmetic.
- Numbers stay small (amounts below 100, multipliers 2 and 3, divisors 2 to 5, divisions
  exact): a model of about 10M parameters trained from scratch in the warm start's budget
  learns two-digit arithmetic; with amounts up to 200 it was still at chance on computed
  digits after 300 steps.
- The user message is a paragraph of background about the person (sentences without
  numbers, but for an optional distractor that has one), then the problem itself: its events
  in order and the question. Names, things, containers, friends, places and background
  sentences come from word lists, and the number of background sentences varies, so prompt
  lengths spread over the range. Keeping the problem in one piece (as GSM8K's are) matters
  at this scale: with the events scattered among the background sentences an 11M model
  copied no number from the prompt after 300 warm-start steps.
- Everything is a pure function of the seed: `generate(n, seed)` gives the same problems on
  every machine, and the task dedupes on the user message, so the held-out problems are never
  trained on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from rlhf.types import Prompt

SYSTEM_MESSAGE = (
    "You are a careful math tutor. Solve the word problem step by step. Write one short "
    "sentence per step with the computation it needs, like 12 + 7 = 19. On the last line, "
    "write the final answer as #### followed by the number, and nothing else."
)

# (name, subject pronoun, object pronoun, possessive)
PEOPLE = [
    (n, "she", "her", "her")
    for n in "Maria Emma Sofia Aisha Chloe Grace Hannah Lucy Mei Nora Olivia Priya Rosa Zoe".split()
] + [
    (n, "he", "him", "his")
    for n in "Liam Noah Omar Ben Carlos David Ethan Felix Hugo Jack Kenji Leo Marco Sam".split()
]
THINGS = (
    "apples marbles stickers pencils cookies stamps seashells cards crayons buttons "
    "oranges candles beads shells coins books eggs cupcakes muffins balloons"
).split()
CONTAINERS = "bags boxes packs jars crates baskets tins bundles".split()
FRIENDS = [
    "a friend",
    "a neighbour",
    "a classmate",
    "a cousin",
    "the teacher",
    "a younger brother",
    "an older sister",
    "the coach",
]
GROUPS = "friends classmates cousins tables shelves teams boxes children".split()
PLACES = "the market|the school fair|the corner shop|the library sale|the town square".split("|")
TOWNS = "Riverton|Maple Hill|Oakdale|Brookside|Fairview|Lakewood|Pinecrest|Stonebridge".split("|")
DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
WEATHER = "sunny rainy windy cloudy cold warm grey bright".split()
COLOURS = "red blue green yellow purple orange".split()

# Sentences without numbers, so they lengthen the prompt without changing the answer.
FILLERS = [
    "{Name} lives in {town} with {pos} family.",
    "It is a {weather} {day} and {place} is full of people.",
    "{Pos} favourite colour is {colour}, so {sub} likes {colour} {things} best.",
    "{Sub_cap} keeps the {things} on a shelf in {pos} room.",
    "{Sub_cap} has been collecting {things} for a long time.",
    "Everyone in {town} knows how much {name} likes {things}.",
    "{Sub_cap} writes everything down in a small notebook so that nothing is forgotten.",
    "The weather in {town} has been {weather} all week.",
    "{Pos} best friend thinks that this is a very good plan.",
    "{Sub_cap} walks to {place} after lunch.",
    "On the way, {sub} stops to say hello to a neighbour.",
    "The shopkeeper at {place} smiles and waves.",
    "{Sub_cap} wants to keep track of exactly how many {things} there are.",
    "Later, {sub} sits down to count them carefully.",
    "{Name} puts on a {colour} coat before leaving the house.",
    "{Pos} family is proud of how organised {sub} is.",
    "The {things} at {place} are sold in {containers}.",
    "{Sub_cap} hums a song while sorting the {things} by size.",
    "It takes a while, but {sub} does not mind.",
    "{Name} tells the story to {pos} grandmother over dinner.",
]
# One sentence with a number that does not matter: the model must read, not grab numbers.
DISTRACTORS = [
    "{Pos} cousin, who is {n} years old, comes along to help.",
    "The walk to {place} takes {n} minutes.",
    "{Name} has {n} pages left in {pos} notebook.",
    "The bus to {place} leaves at {n} minutes past the hour.",
]


@dataclass(frozen=True)
class WordProblem:
    question: str  # the user message
    solution: str  # the worked answer, ending "#### <answer>"
    answer: int

    def messages(self) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": SYSTEM_MESSAGE},
            {"role": "user", "content": self.question},
        ]

    def prompt(self) -> Prompt:
        """As a task prompt: the chat, with the worked solution as its `answer` column."""
        return Prompt(
            text=self.question, columns={"answer": self.solution}, messages=self.messages()
        )


def without_background(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The same conversation with the user message's background paragraph left out: the
    problem itself (events and question) only. The solution's distance to every number it
    reads is unchanged, so what a warm start learns on these carries over to full prompts."""
    *head, user = messages
    problem = user["content"].split("\n\n", 1)[-1]
    return [*head, {**user, "content": problem}]


class _Story:
    """One problem being written: the prompt's sentences and the solution's lines."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        name, sub, obj, pos = PEOPLE[rng.integers(len(PEOPLE))]
        self.words = {
            "name": name,
            "Name": name,
            "sub": sub,
            "Sub_cap": sub.capitalize(),
            "obj": obj,
            "pos": pos,
            "Pos": pos.capitalize(),
            "things": THINGS[rng.integers(len(THINGS))],
            "containers": CONTAINERS[rng.integers(len(CONTAINERS))],
            "place": PLACES[rng.integers(len(PLACES))],
            "town": TOWNS[rng.integers(len(TOWNS))],
            "day": DAYS[rng.integers(len(DAYS))],
            "weather": WEATHER[rng.integers(len(WEATHER))],
            "colour": COLOURS[rng.integers(len(COLOURS))],
        }
        self.events: list[str] = []
        self.lines: list[str] = []
        self.question = self.fill("How many {things} does {name} have now?")
        self.goal = self.fill("We need to find how many {things} {name} has at the end.")
        self.closing = "So {name} has {x} {things} at the end."

    def pick(self, low: int, high: int) -> int:
        """A whole number in [low, high]."""
        return int(self.rng.integers(low, high + 1))

    def fill(self, template: str, **numbers: object) -> str:
        return template.format(**self.words, **numbers)

    def say(self, event: str, line: str, **values: object) -> None:
        """An event of the story and the solution's line for it, which quotes the event's
        words before its computation (as worked solutions do), so finding a number in the
        prompt is matching words already written."""
        self.events.append(self.fill(event, **values))
        self.lines.append(self.fill(line, **values))


def _start(s: _Story) -> int:
    x = s.pick(10, 40)
    s.say("{Name} has {x} {things}.", "{Name} has {x} {things}.", x=x)
    return x


def _buy_packs(s: _Story, x: int) -> int:
    count, each = s.pick(2, 4), s.pick(2, 6)
    bought = count * each
    s.say(
        "At {place}, {sub} buys {count} {containers} of {things}, and each of them holds "
        "{each} {things}.",
        "{Sub_cap} buys {count} {containers} of {things}, and each of them holds {each} "
        "{things}, so that is {count} * {each} = {b} {things}.",
        count=count,
        each=each,
        b=bought,
    )
    s.lines.append(s.fill("Now {sub} has {x} + {b} = {y} {things}.", x=x, b=bought, y=x + bought))
    return x + bought


def _receive(s: _Story, x: int) -> int:
    more = s.pick(2, 20)
    friend = FRIENDS[s.rng.integers(len(FRIENDS))]
    s.say(
        "Then {friend} gives {obj} {m} more {things}.",
        "{Friend} gives {obj} {m} more {things}, so {sub} has {x} + {m} = {y} {things}.",
        friend=friend,
        Friend=friend[0].upper() + friend[1:],
        m=more,
        x=x,
        y=x + more,
    )
    return x + more


def _give_away(s: _Story, x: int) -> int:
    gone = s.pick(2, min(20, x - 2))
    friend = FRIENDS[s.rng.integers(len(FRIENDS))]
    s.say(
        "{Sub_cap} gives {g} {things} to {friend}.",
        "{Sub_cap} gives {g} {things} to {friend}, so {sub} has {x} - {g} = {y} {things} left.",
        g=gone,
        friend=friend,
        x=x,
        y=x - gone,
    )
    return x - gone


LOSSES = [
    "On the way home, {g} of the {things} get lost",
    "Sadly, {g} of the {things} break",
    "A dog runs off with {g} of the {things}",
]


def _lose(s: _Story, x: int) -> int:
    gone = s.pick(2, min(15, x - 2))
    event = LOSSES[s.rng.integers(len(LOSSES))]
    s.say(
        event + ".",
        event + ", so {x} - {g} = {y} {things} are left.",
        g=gone,
        x=x,
        y=x - gone,
    )
    return x - gone


def _multiply(s: _Story, x: int) -> int:
    times = 3 if x * 3 < MAX_VALUE and s.rng.random() < 0.5 else 2
    word = {2: "twice", 3: "three times"}[times]
    s.say(
        "Then {sub} trades with {pos} friends and ends up with {word} as many {things} as before.",
        "{Sub_cap} ends up with {word} as many {things} as before, so {x} * {t} = {y} {things}.",
        word=word,
        x=x,
        t=times,
        y=x * times,
    )
    return x * times


MIDDLE_STEPS = (_buy_packs, _receive, _give_away, _lose, _multiply)
MAX_VALUE = 100  # every amount stays below this; a step that could pass it is not chosen


def _can_take(step, x: int) -> bool:
    if step in (_give_away, _lose):
        return x >= 6
    if step is _multiply:
        return x * 2 < MAX_VALUE
    return x + 24 < MAX_VALUE  # the most _buy_packs or _receive can add


def _split(s: _Story, x: int) -> int | None:
    """Share equally at the end, if some divisor from 2 to 5 leaves no remainder."""
    divisors = [d for d in range(2, 6) if x % d == 0]
    if not divisors:
        return None
    d = divisors[s.rng.integers(len(divisors))]
    group = GROUPS[s.rng.integers(len(GROUPS))]
    s.say(
        "{Sub_cap} shares all the {things} equally among {d} {g}.",
        "{Sub_cap} shares all the {things} equally among {d} {g}, so each gets {x} / {d} = "
        "{y} {things}.",
        d=d,
        g=group,
        x=x,
        y=x // d,
    )
    s.question = s.fill("How many {things} does each of the {g} get?", g=group)
    s.goal = s.fill("We need to find how many {things} each of the {g} gets.", g=group)
    s.closing = s.fill("So each of the {g} gets {{x}} {things}.", g=group)
    return x // d


def generate_problem(
    rng: np.random.Generator, min_steps: int = 2, max_steps: int = 3
) -> WordProblem:
    s = _Story(rng)
    x = _start(s)
    steps = s.pick(min_steps, max_steps)
    split_at_end = rng.random() < 0.4
    for _ in range(steps - 1 if split_at_end else steps):
        allowed = [f for f in MIDDLE_STEPS if _can_take(f, x)]
        x = allowed[rng.integers(len(allowed))](s, x)
    if split_at_end:
        shared = _split(s, x)
        if shared is None:  # nothing divides it: one more middle step instead
            allowed = [f for f in MIDDLE_STEPS if _can_take(f, x)]
            x = allowed[rng.integers(len(allowed))](s, x)
        else:
            x = shared
    s.lines.insert(0, s.goal)
    s.lines.append(s.fill(s.closing, x=x))
    s.lines.append(f"#### {x}")

    # Background first (it introduces the person; the other sentences in any order), then the
    # problem's events in order and the question.
    fillers = [FILLERS[i] for i in 1 + rng.permutation(len(FILLERS) - 1)[: s.pick(5, 10)]]
    background = [s.fill(f) for f in fillers]
    if rng.random() < 0.5:
        distractor = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        background.insert(
            int(rng.integers(len(background) + 1)), s.fill(distractor, n=s.pick(5, 40))
        )
    background.insert(0, s.fill(FILLERS[0]))
    question = " ".join(background) + "\n\n" + " ".join([*s.events, s.question])
    return WordProblem(question, "\n".join(s.lines), x)


def generate(n: int, seed: int, min_steps: int = 2, max_steps: int = 3) -> list[WordProblem]:
    """`n` distinct problems (by question), a pure function of the arguments."""
    rng = np.random.default_rng([seed, 0x57])
    seen: set[str] = set()
    out: list[WordProblem] = []
    while len(out) < n:
        problem = generate_problem(rng, min_steps, max_steps)
        if problem.question not in seen:
            seen.add(problem.question)
            out.append(problem)
    return out


COMPUTATION = re.compile(r"\d+ [-+*/] \d+ = \d+")
# The prompt of the warm start's arithmetic-practice rows (plain text, not a chat).
PRACTICE = Prompt("Practice:")


def practice_lines(solution: str) -> list[str]:
    """A worked solution's computations as practice lines, written as the solution writes
    them after a word ("so 48 * 3 = 144"), so their tokens match the solution's."""
    return [f"so {c}" for c in COMPUTATION.findall(solution)]
