"""Multi-step arithmetic word problems in GSM8K's shape, generated from templates.

The built-in `word_problems` task is the project's realistic workload that needs no
download: chat prompts (a system message and a user message, rendered by the tokenizer's chat
template) of 150 to 400 tokens, and worked answers of 64 to 256 tokens, one line per step
with its computation, ending `#### <number>` as GSM8K's do, scored by `final_number`.

Why it is built this way:

- A problem is a story about one person and one kind of thing, changed by 2 to 4 operations
  (buying packs of them, getting more, giving some away, losing some, multiplying them, and
  at the end perhaps sharing them equally), then a question. Each operation is one or two
  lines of the worked answer, each line a single `a op b = c`, so a model has to copy the
  right numbers out of a long prompt and get each small computation right: errors compound
  over the steps, as on GSM8K, and a partly trained model is right on only some problems,
  which leaves reinforcement learning room to raise it.
- Numbers stay small (operands below 100, results below 400, one-digit multipliers and
  divisors, divisions exact) so a model of about 10M parameters can learn the per-step
  arithmetic with digits as single tokens.
- Names, things, containers, friends, places and filler sentences (which hold no numbers,
  except for one optional distractor that does) come from word lists, and the number of
  filler sentences varies, so prompt lengths spread over the range and the model cannot
  find the numbers by position.
- Everything is a pure function of the seed: `generate(n, seed)` gives the same problems on
  every machine, and the task dedupes on the user message, so the held-out problems are never
  trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


def _start(s: _Story) -> int:
    x = s.pick(12, 60)
    s.events.append(s.fill("{Name} has {x} {things}.", x=x))
    s.lines.append(s.fill("{Name} starts with {x} {things}.", x=x))
    return x


def _buy_packs(s: _Story, x: int) -> int:
    count, each = s.pick(2, 6), s.pick(3, 12)
    bought = count * each
    s.events.append(
        s.fill(
            "At {place}, {sub} buys {count} {containers} of {things}, and each of them holds "
            "{each} {things}.",
            count=count,
            each=each,
        )
    )
    s.lines.append(
        s.fill("{Sub_cap} buys {count} * {each} = {b} {things}.", count=count, each=each, b=bought)
    )
    s.lines.append(s.fill("Now {sub} has {x} + {b} = {y} {things}.", x=x, b=bought, y=x + bought))
    return x + bought


def _receive(s: _Story, x: int) -> int:
    more = s.pick(5, 40)
    friend = FRIENDS[s.rng.integers(len(FRIENDS))]
    s.events.append(s.fill("Then {friend} gives {obj} {m} more {things}.", friend=friend, m=more))
    s.lines.append(
        s.fill(
            "After getting {m} more, {sub} has {x} + {m} = {y} {things}.", m=more, x=x, y=x + more
        )
    )
    return x + more


def _give_away(s: _Story, x: int) -> int:
    gone = s.pick(3, min(40, x - 5))
    friend = FRIENDS[s.rng.integers(len(FRIENDS))]
    s.events.append(s.fill("{Sub_cap} gives {g} {things} to {friend}.", g=gone, friend=friend))
    s.lines.append(
        s.fill(
            "{Sub_cap} gives away {g}, so {sub} has {x} - {g} = {y} {things} left.",
            g=gone,
            x=x,
            y=x - gone,
        )
    )
    return x - gone


def _lose(s: _Story, x: int) -> int:
    gone = s.pick(2, min(30, x - 5))
    s.events.append(s.fill("On the way home, {g} of the {things} get lost.", g=gone))
    s.lines.append(
        s.fill("{g} are lost, so {x} - {g} = {y} {things} are left.", g=gone, x=x, y=x - gone)
    )
    return x - gone


def _multiply(s: _Story, x: int) -> int:
    times = s.pick(2, 3)
    word = {2: "twice", 3: "three times"}[times]
    s.events.append(
        s.fill(
            "Then {sub} trades with {pos} friends and ends up with {word} as many {things} as "
            "before.",
            word=word,
        )
    )
    s.lines.append(
        s.fill(
            "{Word} as many is {x} * {t} = {y} {things}.",
            Word=word.capitalize(),
            x=x,
            t=times,
            y=x * times,
        )
    )
    return x * times


MIDDLE_STEPS = (_buy_packs, _receive, _give_away, _lose, _multiply)
MAX_VALUE = 400  # results stay below this; a step that would pass it is not chosen
NAMED_STEPS = {f.__name__.strip("_"): f for f in MIDDLE_STEPS}


def _can_take(step, x: int) -> bool:
    if step in (_give_away, _lose):
        return x >= 10
    if step is _multiply:
        return x * 3 < MAX_VALUE
    return x + 72 < MAX_VALUE  # the most _buy_packs or _receive can add


def _split(s: _Story, x: int) -> int | None:
    """Share equally at the end, if some divisor from 2 to 9 leaves no remainder."""
    divisors = [d for d in range(2, 10) if x % d == 0]
    if not divisors:
        return None
    d = divisors[s.rng.integers(len(divisors))]
    group = GROUPS[s.rng.integers(len(GROUPS))]
    s.events.append(
        s.fill("{Sub_cap} shares all the {things} equally among {d} {g}.", d=d, g=group)
    )
    s.lines.append(
        s.fill("Each of the {d} {g} gets {x} / {d} = {y} {things}.", d=d, g=group, x=x, y=x // d)
    )
    s.question = s.fill("How many {things} does each of the {g} get?", g=group)
    s.goal = s.fill("We need to find how many {things} each of the {g} gets.", g=group)
    s.closing = s.fill("So each of the {g} gets {{x}} {things}.", g=group)
    return x // d


def generate_problem(
    rng: np.random.Generator, min_steps: int = 2, max_steps: int = 4
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

    fillers = [FILLERS[i] for i in rng.permutation(len(FILLERS))[: s.pick(6, 11)]]
    sentences = [s.fill(f) for f in fillers]
    if rng.random() < 0.5:
        distractor = DISTRACTORS[rng.integers(len(DISTRACTORS))]
        sentences.append(s.fill(distractor, n=s.pick(5, 40)))
    # The story opens with its first event and keeps the events in order; the other sentences
    # fall anywhere after the opening.
    story = list(s.events)
    for sentence in sentences:
        story.insert(int(rng.integers(1, len(story) + 1)), sentence)
    return WordProblem(" ".join(story) + " " + s.question, "\n".join(s.lines), x)


def generate(n: int, seed: int, min_steps: int = 2, max_steps: int = 4) -> list[WordProblem]:
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
