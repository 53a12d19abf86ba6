"""One batch of named columns, each declared once with its role.

A column is per token (`[B, T]`, aligned with `input_ids`) or per sequence (`[B]`). Its
declaration says what filler rows get (a copy of a real row, for the model's inputs, or
zeros) and whether it is a loss weight (renormalised per optimizer step). Selecting,
concatenating, padding, sharding and the learner's tensor conversion all follow from the
declarations, so a new column (values, a preference probability, ...) is one `declare` call.

Rows belong to **units** (`TrainBatch.units`): a prompt's group of samples, a preference pair.
A unit is never split: it stays on one rank and in one micro-batch. Micro-batches hold at most
a number of rows and, optionally, a number of token slots (rows x the longest row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from rlhf.types import Rollout

Role = Literal["token", "sequence"]


@dataclass(frozen=True)
class Column:
    name: str
    role: Role
    dtype: type
    doc: str
    filler: Literal["copy", "zero"] = "zero"  # filler rows: a copy of a real row, or zeros
    loss_weight: bool = False  # renormalised so every optimizer step sees a full-scale loss


COLUMNS: dict[str, Column] = {}


def declare(
    name: str,
    role: Role,
    dtype: type,
    doc: str,
    filler: Literal["copy", "zero"] = "zero",
    loss_weight: bool = False,
) -> Column:
    """Declare a column (once; an algorithm module declares its own at import)."""
    col = Column(name, role, dtype, doc, filler, loss_weight)
    if name in COLUMNS and COLUMNS[name] != col:
        raise ValueError(f"column {name!r} is already declared differently: {COLUMNS[name]}")
    COLUMNS[name] = col
    return col


# The columns every run has, and those the shared stages produce.
INPUT_IDS = declare("input_ids", "token", np.int64, "prompt + completion, right-padded", "copy")
ATTENTION_MASK = declare("attention_mask", "token", np.int64, "1 on real tokens", "copy")
COMPLETION_MASK = declare(
    "completion_mask",
    "token",
    np.float32,
    "1 on the completion tokens the policy sampled (an episode's observation tokens: 0)",
)
SAMPLER_LOGPROBS = declare(
    "sampler_logprobs", "token", np.float32, "log-probs under the sampling distribution"
)
TRUNCATED = declare("truncated", "sequence", np.float32, "1 if the completion hit max tokens")
FROM_MIXTURE = declare(
    "from_mixture",
    "sequence",
    np.float32,
    "1 if sampled from the policy/reference mixture: its sampler log-probs are the mixture's",
)
SAMPLE_VERSION = declare(
    "sample_version", "sequence", np.int64, "the policy version whose weights generated the row"
)
REWARDS = declare("rewards", "sequence", np.float32, "scalar reward; NaN = no valid reward")
ENV_REWARDS = declare(
    "env_rewards",
    "sequence",
    np.float32,
    "an episode's reward from its environment (rlhf.envs); NaN: it ended on a failure",
)
TURN_REWARDS = declare(
    "turn_rewards",
    "token",
    np.float32,
    "rollout.turn_rewards=per_turn: each turn's environment reward on its last token (their "
    "sum is in env_rewards); PPO and REINFORCE++ place them there instead of the sum at the end",
)
REF_LOGPROBS = declare("ref_logprobs", "token", np.float32, "frozen reference's log-probs")
OLD_LOGPROBS = declare("old_logprobs", "token", np.float32, "learner's log-probs before update")
VALUES = declare("values", "token", np.float32, "critic's V(state before token t), pre-update")
LOSS_WEIGHTS = declare(
    "loss_weights", "token", np.float32, "the loss aggregation rule", loss_weight=True
)
ADVANTAGES = declare("advantages", "token", np.float32, "per-token advantages")
RETURNS = declare("returns", "token", np.float32, "value targets (PPO)")
KL_COEF = declare("kl_coef", "sequence", np.float32, "KL coefficient for a loss-term KL")


@dataclass
class TrainBatch:
    """Rows are samples; `columns` maps declared names to arrays; `units` keeps groups whole.

    Arrays are numpy (Ray moves numpy zero-copy; torch tensors would be pickled).
    """

    columns: dict[str, np.ndarray]
    units: np.ndarray  # [B] int64; rows sharing an id stay together (filler rows: < 0)
    policy_version: int = 0

    def __post_init__(self) -> None:
        self.units = np.asarray(self.units, dtype=np.int64)
        for name, array in list(self.columns.items()):
            self.columns[name] = self._checked(name, array)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.units.shape[0])

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    def __getitem__(self, name: str) -> np.ndarray:
        try:
            return self.columns[name]
        except KeyError:
            raise KeyError(f"batch has no column {name!r}; it has {sorted(self.columns)}") from None

    def __setitem__(self, name: str, array: np.ndarray) -> None:
        self.columns[name] = self._checked(name, array)

    @property
    def width(self) -> int:
        return int(self.columns[INPUT_IDS.name].shape[1])

    def _checked(self, name: str, array: np.ndarray) -> np.ndarray:
        col = COLUMNS.get(name)
        if col is None:
            raise KeyError(f"column {name!r} is not declared (rlhf.batch.declare)")
        array = np.asarray(array, dtype=col.dtype)
        rows = len(self.units)
        if col.role == "sequence" and array.shape != (rows,):
            raise ValueError(
                f"column {name!r} is per sequence: want shape ({rows},), got {array.shape}"
            )
        if col.role == "token":
            width = (
                self.columns[INPUT_IDS.name].shape[1] if INPUT_IDS.name in self.columns else None
            )
            if array.ndim != 2 or array.shape[0] != rows or (width and array.shape[1] != width):
                raise ValueError(
                    f"column {name!r} is per token: want shape ({rows}, {width}), got {array.shape}"
                )
        return array

    # ------------------------------------------------------------------ row operations
    def select(self, rows: np.ndarray | list[int] | slice) -> TrainBatch:
        return TrainBatch(
            {k: v[rows] for k, v in self.columns.items()}, self.units[rows], self.policy_version
        )

    def only(self, names: list[str]) -> TrainBatch:
        """The same rows with just these columns (less to send to an actor)."""
        return TrainBatch({k: self.columns[k] for k in names}, self.units, self.policy_version)

    def filler(self, n: int) -> TrainBatch:
        """n rows that add nothing: model inputs copied from the shortest row (a filler
        micro-batch then costs the least compute), every other column zero."""
        source = int(np.argmin(self.lengths())) if len(self) else 0
        cols = {}
        for name, v in self.columns.items():
            copy = v[[source] * n]
            cols[name] = copy if COLUMNS[name].filler == "copy" else np.zeros_like(copy)
        return TrainBatch(cols, -np.arange(1, n + 1), self.policy_version)

    @staticmethod
    def concat(parts: list[TrainBatch]) -> TrainBatch:
        """Rows of `parts` in order; token columns right-padded (with zeros) to the widest."""
        width = max(p.width for p in parts)
        names = parts[0].columns.keys()
        for p in parts[1:]:
            if p.columns.keys() != names:
                raise ValueError(
                    f"cannot concat batches with columns {sorted(names)} and {sorted(p.columns)}"
                )
        cols = {}
        for name in names:
            arrays = [p.columns[name] for p in parts]
            if COLUMNS[name].role == "token":
                arrays = [np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in arrays]
            cols[name] = np.concatenate(arrays, axis=0)
        units = np.concatenate([p.units for p in parts])
        return TrainBatch(cols, units, min(p.policy_version for p in parts))

    def unit_rows(self) -> list[np.ndarray]:
        """Row indices of each unit, units in order of first appearance."""
        return unit_groups(self.units)

    def lengths(self) -> np.ndarray:
        """[B] tokens of each row (right padding: a row's real tokens come first)."""
        return self.columns[ATTENTION_MASK.name].sum(axis=1)


# ---------------------------------------------------------------- splitting work over actors
def unit_groups(units: np.ndarray) -> list[np.ndarray]:
    """Row indices of each unit, units in order of first appearance."""
    units = np.asarray(units)
    _, first, inverse = np.unique(units, return_index=True, return_inverse=True)
    return [np.flatnonzero(inverse == u) for u in np.argsort(first, kind="stable")]


def split_unit_ids(units: np.ndarray, parts: int) -> list[np.ndarray]:
    """`parts` contiguous row sets of near-equal size, cut only between units (some are
    empty when there are fewer units than parts)."""
    groups = unit_groups(units)
    cuts = _balanced_cuts([len(g) for g in groups], parts)
    return [
        np.concatenate([groups[u] for u in cut]) if cut else np.zeros(0, np.int64) for cut in cuts
    ]


# ---------------------------------------------------------------- the learner's plan
@dataclass
class Shard:
    """One rank's part of a batch, in execution order, with the plan every rank follows.

    `steps[k]` lists the row counts of the micro-batches of optimizer step k; every rank
    gets the same number of steps and of micro-batches per step (ZeRO's forwards and
    backwards are collectives), padding with one-row filler micro-batches where needed.
    """

    batch: TrainBatch
    rows: np.ndarray  # [len(batch)] index of each row in the full batch; -1 = filler
    steps: list[list[int]] = field(default_factory=list)
    epochs: int = 1

    @property
    def num_steps(self) -> int:
        return len(self.steps) * self.epochs

    def micro_batches(self) -> list[list[slice]]:
        """Row slices of every micro-batch, per optimizer step (one epoch)."""
        out, start = [], 0
        for step in self.steps:
            slices = []
            for size in step:
                slices.append(slice(start, start + size))
                start += size
            out.append(slices)
        return out


def _balanced_cuts(sizes: list[int], parts: int) -> list[list[int]]:
    """Contiguous groups of unit indexes, near-equal in rows, cut only between units."""
    ends = np.cumsum(sizes)
    total = int(ends[-1]) if len(ends) else 0
    cuts = [0]
    for k in range(1, parts):
        target = k * total / parts
        best = int(np.argmin(np.abs(np.concatenate([[0], ends]) - target)))
        cuts.append(max(best, cuts[-1]))
    cuts.append(len(sizes))
    return [list(range(cuts[i], cuts[i + 1])) for i in range(parts)]


def trimmed_width(lengths) -> int:
    """Columns a micro-batch computes: its longest row (`take_rows` trims the right padding
    past it); at least one."""
    return max(int(lengths.max()), 1) if len(lengths) else 1


def pack_micro_batches(
    order: list[int],
    sizes: list[int],
    widths: list[int],
    max_rows: int,
    max_tokens: int | None = None,
) -> list[list[int]]:
    """Consecutive units of `order` into micro-batches of at most `max_rows` rows and, with a
    token budget, at most `max_tokens` token slots (rows x the longest row: what a trimmed
    micro-batch computes). A unit over either limit is a micro-batch of its own."""
    out: list[list[int]] = []
    rows = width = 0
    for u in order:
        grown_rows, grown_width = rows + sizes[u], max(width, widths[u])
        fits = grown_rows <= max_rows and (
            max_tokens is None or grown_rows * grown_width <= max_tokens
        )
        if out and fits:
            out[-1].append(u)
            rows, width = grown_rows, grown_width
        else:
            out.append([u])
            rows, width = sizes[u], widths[u]
    return out


def longest_first(units: list[int], widths: list[int]) -> list[int]:
    """Units by decreasing length: neighbours in a micro-batch have similar lengths (less
    padding), and the widest micro-batch runs first (memory runs out at once, if at all).
    Within a step this only reorders the sum of the accumulated gradients."""
    return sorted(units, key=lambda u: (-widths[u], u))


def row_micro_batches(
    lengths: np.ndarray, max_rows: int, max_tokens: int | None = None
) -> list[np.ndarray]:
    """Row indices of micro-batches over independent rows (a no-grad pass that may split
    units, e.g. the reference's), longest rows first, within both limits."""
    widths = [max(int(n), 1) for n in lengths]
    order = longest_first(list(range(len(widths))), widths)
    packed = pack_micro_batches(order, [1] * len(widths), widths, max_rows, max_tokens)
    return [np.asarray(mb, dtype=np.int64) for mb in packed]


def _spread_over_ranks(units: list[int], cost: list[int], world_size: int) -> list[list[int]]:
    """Units to ranks, costliest first, each to the rank with the least cost so far."""
    load = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for u in sorted(units, key=lambda u: (-cost[u], u)):
        r = int(np.argmin(load))
        owned[r].append(u)
        load[r] += cost[u]
    return owned


def plan_shards(
    batch: TrainBatch,
    world_size: int,
    mini_batches: int = 1,
    micro_batch_size: int = 64,
    epochs: int = 1,
    max_tokens_per_micro_batch: int | None = None,
) -> list[Shard]:
    """Cut a batch into one `Shard` per rank: whole units, `mini_batches` optimizer steps of
    near-equal rows, units spread over ranks (by rows; with a token budget by token slots),
    micro-batches of at most `micro_batch_size` rows and `max_tokens_per_micro_batch` token
    slots (rows x longest row), longest units first; a unit over a limit is a micro-batch of
    its own.

    Loss-weight columns are rescaled per step so each step's weights sum to the batch's
    total: every optimizer step then sees a full-scale loss, whatever its share of rows.
    """
    groups = batch.unit_rows()
    sizes = [len(g) for g in groups]
    lengths = batch.lengths()
    widths = [trimmed_width(lengths[g]) for g in groups]
    budget = max_tokens_per_micro_batch
    cost = sizes if budget is None else [n * w for n, w in zip(sizes, widths, strict=True)]
    weight_cols = [n for n in batch.columns if COLUMNS[n].loss_weight]
    scaled = batch.select(np.arange(len(batch)))  # a copy: weights are rescaled in place
    # per rank: the row indices of every micro-batch of every step
    plan: list[list[list[np.ndarray]]] = [[] for _ in range(world_size)]
    for step_units in _balanced_cuts(sizes, mini_batches):
        if not step_units:
            continue
        rows_of_step = np.concatenate([groups[u] for u in step_units])
        for name in weight_cols:
            total, here = float(batch[name].sum()), float(batch[name][rows_of_step].sum())
            if here > 0:
                scaled.columns[name][rows_of_step] *= total / here
        packed = [
            pack_micro_batches(
                longest_first(owned, widths), sizes, widths, micro_batch_size, budget
            )
            for owned in _spread_over_ranks(step_units, cost, world_size)
        ]
        count = max(len(p) for p in packed)
        for r in range(world_size):
            micro = [np.concatenate([groups[u] for u in mb]) for mb in packed[r]]
            micro += [np.array([-1])] * (count - len(micro))  # filler: same forward count
            plan[r].append(micro)

    shards = []
    for r in range(world_size):
        order = (
            np.concatenate([mb for step in plan[r] for mb in step])
            if plan[r]
            else np.zeros(0, np.int64)
        )
        real = order >= 0
        parts = []
        if real.any():
            parts.append(scaled.select(order[real]))
        n_fill = int((~real).sum())
        if n_fill:
            parts.append(batch.filler(n_fill))
        # keep execution order: real rows and filler rows interleave as planned
        merged = (
            TrainBatch.concat(parts) if len(parts) > 1 else parts[0] if parts else batch.filler(1)
        )
        position = np.empty(len(order), dtype=np.int64)
        position[np.flatnonzero(real)] = np.arange(int(real.sum()))
        position[np.flatnonzero(~real)] = int(real.sum()) + np.arange(n_fill)
        shard_batch = merged.select(position) if len(order) else merged
        steps = [[len(mb) for mb in step] for step in plan[r]]
        shards.append(Shard(shard_batch, order if len(order) else np.array([-1]), steps, epochs))
    return shards


def weighted_units(batch: TrainBatch) -> TrainBatch:
    """The batch without the units whose every loss weight is zero (dynamic sampling's
    dropped groups, units with no valid reward): every loss is a weighted sum, so they add
    nothing to any gradient or weighted metric, and computing them is waste. The whole batch
    when no unit has weight (the iteration then trains nothing)."""
    weight_cols = [n for n in batch.columns if COLUMNS[n].loss_weight]
    if not weight_cols:
        return batch
    per_row = sum(np.abs(batch[n]).reshape(len(batch), -1).sum(1) for n in weight_cols)
    keep = np.isin(batch.units, batch.units[per_row > 0])
    if keep.all() or not keep.any():
        return batch
    return batch.select(np.flatnonzero(keep))


def padding_fraction(shards: list[Shard]) -> float:
    """The share of the token slots the planned micro-batches compute (rows x longest row
    each) that hold no real token: right padding, and filler rows (whose copied tokens are
    computed for nothing)."""
    slots = real = 0
    for shard in shards:
        lengths = shard.batch.lengths()
        useful = np.where(shard.rows >= 0, lengths, 0)
        for step in shard.micro_batches():
            for rows in step:
                slots += (rows.stop - rows.start) * trimmed_width(lengths[rows])
                real += int(useful[rows].sum())
    return 1.0 - real / slots if slots else 0.0


def scatter_rows(
    full_rows: int, width: int, shards: list[Shard], outputs: list[np.ndarray]
) -> np.ndarray:
    """Put per-rank [rows, T'] outputs back in the full batch's row order, [full_rows, width]."""
    out = np.zeros((full_rows, width), dtype=np.float32)
    for shard, part in zip(shards, outputs, strict=True):
        real = shard.rows >= 0
        w = min(width, part.shape[1])
        out[shard.rows[real], :w] = part[real, :w]
    return out


# ---------------------------------------------------------------- from rollouts
def collate_rollouts(rollouts: list[Rollout], pad_id: int, first_unit: int = 0) -> TrainBatch:
    """Rollouts (prompt-major, in prompt order) -> a batch whose units are the prompts."""
    rows: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    sampler: list[list[float]] = []
    truncated: list[float] = []
    units: list[int] = []
    mixture: list[float] = []
    versions: list[int] = []
    policy: list[list[int] | None] = []  # an episode's policy-token mask; None: all policy
    offset = first_unit
    for r in rollouts:
        for i, (p, c) in enumerate(zip(r.prompt_ids, r.completion_ids, strict=True)):
            rows.append(list(p) + list(c))
            spans.append((len(p), len(p) + len(c)))
            sampler.append(r.sampler_logprobs[i])
            truncated.append(float(r.finish_reasons[i] == "length"))
            units.append(offset + r.prompt_index[i])
            mixture.append(float(r.from_mixture[i]) if r.from_mixture else 0.0)
            versions.append(r.policy_version)
            policy.append(r.policy_masks[i] if r.policy_masks else None)
        offset += max(r.prompt_index, default=-1) + 1
    b, t = len(rows), max(len(x) for x in rows)
    input_ids = np.full((b, t), pad_id, dtype=np.int64)
    attention_mask = np.zeros((b, t), dtype=np.int64)
    completion_mask = np.zeros((b, t), dtype=np.float32)
    sampler_lp = np.zeros((b, t), dtype=np.float32)
    for i, (row, (start, end)) in enumerate(zip(rows, spans, strict=True)):
        input_ids[i, : len(row)] = row
        attention_mask[i, : len(row)] = 1
        completion_mask[i, start:end] = policy[i] if policy[i] is not None else 1.0
        sampler_lp[i, start:end] = sampler[i][: end - start]
    columns = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "completion_mask": completion_mask,
        "sampler_logprobs": sampler_lp,
        "truncated": np.asarray(truncated, dtype=np.float32),
        "sample_version": np.asarray(versions, dtype=np.int64),
    }
    if any(r.from_mixture for r in rollouts):
        columns["from_mixture"] = np.asarray(mixture, dtype=np.float32)
    if any(r.token_rewards for r in rollouts):
        placed = np.zeros((b, t), dtype=np.float32)
        rewards = [x for r in rollouts for x in (r.token_rewards or [[]] * len(r))]
        for i, ((start, end), row) in enumerate(zip(spans, rewards, strict=True)):
            placed[i, start : start + len(row)] = row[: end - start]
        columns["turn_rewards"] = placed
    if any(r.env_rewards for r in rollouts):
        columns["env_rewards"] = np.asarray(
            [x for r in rollouts for x in r.env_rewards], dtype=np.float32
        )
    return TrainBatch(
        columns,
        np.asarray(units, dtype=np.int64),
        policy_version=min(r.policy_version for r in rollouts),
    )
