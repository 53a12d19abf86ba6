"""Online preference optimisation: each iteration samples K completions per prompt from the
current policy, a judge compares them, and a pairwise loss trains on the fresh pairs.

- online_dpo (Guo et al. 2024, online AI feedback): DPO's loss and its relatives
  (`rlhf.algorithms.preference_losses`): sigmoid (DPO), ipo, hinge (SLiC), robust (rDPO),
  bco; cDPO label smoothing, an NLL term on the chosen answer (RPO), length normalisation.
- ipo (online IPO, Calandriello et al. 2024): the IPO loss with the judge's probability as
  its target, both samples from the current policy.

Batch layout: `arrange` turns the sampled rows into pairs, two rows each (chosen, then
rejected), one unit per pair, so a pair never splits across ranks or micro-batches. A pair's
weight (1 / pairs) is spread over each of its rows' completion tokens in `loss_weights`
(row sum = pair weight), which keeps the plan's per-step rescaling and the NLL term's token
mean in one column.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field

from rlhf.algorithms.base import Algorithm, SamplingMixture
from rlhf.algorithms.preference_losses import SOFT_TARGET_LOSSES, pair_loss
from rlhf.batch import TrainBatch, declare
from rlhf.configbase import Section
from rlhf.rewards.comparisons import Comparisons, build_pairs

if TYPE_CHECKING:
    from rlhf.config import Config

PAIR_SIGN = declare("pair_sign", "sequence", np.float32, "+1 chosen, -1 rejected, 0 filler")
PREFERENCE = declare(
    "preference", "sequence", np.float32, "target P(chosen > rejected) of the row's pair"
)
REWARD_SHIFT = declare("reward_shift", "sequence", np.float32, "BCO's running reward mean")


def _mask_truncated_field() -> bool:
    return Field(
        False,
        description="no pair with a completion cut at max_new_tokens (its judgement compares "
        "an unfinished answer); dropped pairs are counted: pairs/dropped_truncated",
    )


def without_truncated(comparisons: Comparisons, truncated: np.ndarray) -> Comparisons:
    """The comparisons between two completions that both ended before max_new_tokens."""
    whole = (truncated[comparisons.a] == 0) & (truncated[comparisons.b] == 0)
    return Comparisons(comparisons.a[whole], comparisons.b[whole], comparisons.prob[whole])


class PreferenceConfig(Section):
    """What every pairwise preference algorithm shares."""

    beta: float = Field(
        0.1, gt=0, description="strength of the tie to the reference (DPO's beta, IPO's tau)"
    )
    pairs: Literal["all", "best_vs_worst"] = Field(
        "all",
        description="every judged pair (keeps the objective's fixed point), or one pair per "
        "prompt, its Borda-best and worst sample (cheaper; biased toward Borda's winner)",
    )
    tie_margin: float = Field(
        0.0, ge=0, lt=0.5, description="drop pairs with |P - 1/2| <= this (a tie has no preference)"
    )
    soft_targets: bool = Field(
        True,
        description="the judge's P as the target (sigmoid, ipo); the other losses take hard labels",
    )
    length_normalize: bool = Field(
        False, description="log-ratios averaged over tokens instead of summed"
    )
    nll_coef: float = Field(
        0.0, ge=0, description="weight of the chosen answer's token-mean NLL (RPO); 0 = off"
    )
    mini_batches: int = Field(1, gt=0, description="optimizer steps per batch")
    mask_truncated_completions: bool = _mask_truncated_field()

    def check(self, cfg: Config) -> None:
        if cfg.samples_per_prompt() < 2:
            raise ValueError(
                f"rollout.samples_per_prompt must be >= 2 for {self.name}: pairs compare "  # type: ignore[attr-defined]
                "samples of one prompt"
            )


class OnlineDPOConfig(PreferenceConfig):
    name: Literal["online_dpo"] = "online_dpo"
    loss_type: Literal["sigmoid", "ipo", "hinge", "robust", "bco"] = "sigmoid"
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="cDPO: target (1-eps) p + eps (1-p) (sigmoid loss)"
    )
    flip_rate: float = Field(
        0.1, ge=0, lt=0.5, description="robust loss: the assumed rate of flipped labels"
    )
    bco_shift_decay: float = Field(
        0.9, ge=0, lt=1, description="bco: decay of the running mean of implicit rewards"
    )


class IPOConfig(PreferenceConfig):
    name: Literal["ipo"] = "ipo"


class PreferenceAlgorithm(Algorithm):
    """Pairs from a judge, a pairwise loss against the reference."""

    cfg: PreferenceConfig

    @property
    def loss_type(self) -> str:
        return getattr(self.cfg, "loss_type", "ipo")

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"preferences", "ref_logprobs"})

    @property
    def mini_batches(self) -> int:
        return self.cfg.mini_batches

    # ------------------------------------------------------------------ controller half
    def arrange(
        self, batch: TrainBatch, comparisons: Comparisons | None
    ) -> tuple[TrainBatch, dict[str, float]]:
        if comparisons is None:
            raise RuntimeError(f"{self.name}: no judge answers (the preferences stage did not run)")
        judged = len(comparisons)
        if self.cfg.mask_truncated_completions:
            comparisons = without_truncated(comparisons, batch["truncated"])
        pairs = build_pairs(comparisons, batch.units, self.cfg.pairs, self.cfg.tie_margin)
        rows = np.stack([pairs.chosen, pairs.rejected], axis=1).reshape(-1)
        out = batch.select(rows)
        out.units = np.repeat(np.arange(len(pairs), dtype=np.int64), 2)
        out["pair_sign"] = np.tile(np.array([1.0, -1.0], np.float32), len(pairs))
        soft = self.cfg.soft_targets and self.loss_type in SOFT_TARGET_LOSSES
        target = pairs.target if soft else np.ones(len(pairs))
        out["preference"] = np.repeat(target, 2)
        metrics = {
            "pairs/count": float(len(pairs)),
            "pairs/dropped_ties": float(pairs.dropped_ties),
            "pairs/dropped_no_answer": float(pairs.dropped_invalid),
            "pairs/dropped_truncated": float(judged - len(comparisons)),
        }
        if len(pairs):
            metrics["pairs/target_mean"] = float(np.mean(pairs.target))
        return out, metrics

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        """Each pair weighs 1 / (pairs that can train), spread over each row's completion
        tokens; a pair's weight is read from its chosen row, so a pair whose chosen
        completion has no token trains nothing and does not count in the average."""
        mask = batch["completion_mask"]
        lengths = mask.sum(axis=1, keepdims=True)
        trains = (batch["pair_sign"] > 0) & (lengths[:, 0] > 0)  # chosen rows with a token
        in_pair = np.isin(batch.units, batch.units[trains])[:, None]
        batch["loss_weights"] = in_pair * mask / np.maximum(lengths, 1.0) / max(trains.sum(), 1)
        return {}

    # ------------------------------------------------------------------ learner half
    def sequence_log_ratios(
        self, logprobs: torch.Tensor, mb: dict[str, torch.Tensor]
    ) -> torch.Tensor:
        """h = sum_t (log pi_theta - log pi_ref) over completion tokens (or the mean)."""
        mask = mb["completion_mask"]
        h = ((logprobs - mb["ref_logprobs"]) * mask).sum(-1)
        if self.cfg.length_normalize:
            h = h / mask.sum(-1).clamp(min=1.0)
        return h

    def loss(self, out, mb):
        lp = out.logprobs
        sign = mb["pair_sign"]
        chosen, rejected = sign > 0, sign < 0
        if not bool(chosen.any()):  # a filler micro-batch: no pair, a zero loss with a graph
            return (lp * 0.0).sum(), {}
        lw = mb["loss_weights"]
        w = lw[chosen].sum(-1)  # each pair's weight
        h = self.sequence_log_ratios(lp, mb)
        h_w, h_l = h[chosen], h[rejected]
        per_pair = pair_loss(
            self.loss_type,
            h_w,
            h_l,
            self.cfg.beta,
            mb["preference"][chosen],
            label_smoothing=getattr(self.cfg, "label_smoothing", 0.0),
            flip_rate=getattr(self.cfg, "flip_rate", 0.0),
            shift=mb["reward_shift"][chosen] if "reward_shift" in mb else None,
        )
        loss = (w * per_pair).sum()
        beta, margin = self.cfg.beta, (h_w - h_l).detach()
        metrics = {
            "loss/preference": loss.detach(),
            "pref/accuracy": (w * (margin > 0).float()).sum(),
            "pref/margin": (w * beta * margin).sum(),
            "pref/chosen_reward": (w * beta * h_w.detach()).sum(),
            "pref/rejected_reward": (w * beta * h_l.detach()).sum(),
            "pref/chosen_logp": (w * (lp.detach() * mb["completion_mask"])[chosen].sum(-1)).sum(),
        }
        if self.cfg.nll_coef > 0:
            nll = -(lw[chosen] * lp[chosen]).sum()  # pair-weighted token mean
            loss = loss + self.cfg.nll_coef * nll
            metrics["loss/nll"] = nll.detach()
        metrics["loss/total"] = loss.detach()
        return loss, metrics


class OnlineDPO(PreferenceAlgorithm):
    name = "online_dpo"
    config = OnlineDPOConfig
    cfg: OnlineDPOConfig

    def __init__(self, cfg: OnlineDPOConfig, max_new_tokens: int) -> None:
        super().__init__(cfg, max_new_tokens)
        self._shift: float | None = None

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        metrics = super().prepare(batch)
        if self.cfg.loss_type == "bco" and len(batch):
            # BCO's delta: a running mean of implicit rewards beta * h over chosen and
            # rejected, estimated from the sampler's log-probs (the policy before this step),
            # so every rank uses the same value.
            mask = batch["completion_mask"]
            h = ((batch["sampler_logprobs"] - batch["ref_logprobs"]) * mask).sum(axis=1)
            if self.cfg.length_normalize:
                h = h / np.maximum(mask.sum(axis=1), 1.0)
            mean = float(self.cfg.beta * h.mean())
            d = self.cfg.bco_shift_decay
            self._shift = mean if self._shift is None else d * self._shift + (1 - d) * mean
            batch["reward_shift"] = np.full(len(batch), self._shift, np.float32)
            metrics["pref/bco_shift"] = self._shift
        return metrics

    def state(self) -> dict[str, float]:
        return {} if self._shift is None else {"bco_shift": self._shift}

    def load_state(self, state: dict[str, float]) -> None:
        self._shift = state.get("bco_shift")


class IPO(PreferenceAlgorithm):
    name = "ipo"
    config = IPOConfig
    cfg: IPOConfig


# ---------------------------------------------------------------- samples from the mixture
class MixtureConfig(Section):
    """Sampling from the geometric mixture pi_mix proportional to
    pi_theta^(1-coef) * pi_ref^coef, token by token, inside the vLLM engine."""

    mixture_coef: float = Field(
        0.5, ge=0, le=1, description="weight of the reference in the mixture's logits"
    )

    def check_engine(self, cfg: Config) -> None:
        if cfg.rollout.engine != "vllm":
            raise ValueError(
                f"rollout.engine must be 'vllm' for {self.name}: the mixture is sampled inside "  # type: ignore[attr-defined]
                "vLLM"
            )


class IPOMDConfig(PreferenceConfig, MixtureConfig):
    name: Literal["ipo_md"] = "ipo_md"
    mixture_samples: Literal["both", "one"] = Field(
        "both",
        description="every sample of a prompt from the mixture, or one from the policy and one "
        "from the mixture (samples_per_prompt 2)",
    )

    @property
    def fixed_samples_per_prompt(self) -> int | None:
        return 2 if self.mixture_samples == "one" else None

    def check(self, cfg: Config) -> None:
        super().check(cfg)
        self.check_engine(cfg)
        if self.mixture_samples == "one" and cfg.samples_per_prompt() != 2:
            raise ValueError(
                "rollout.samples_per_prompt must be 2 for ipo_md with mixture_samples='one'"
            )


class IPOMD(PreferenceAlgorithm):
    """IPO-MD (Calandriello et al. 2024): online IPO on samples from the mixture. The loss
    recomputes log pi_theta and log pi_ref of the sampled tokens; the sampler's log-probs
    (the mixture's) take no part in it."""

    name = "ipo_md"
    config = IPOMDConfig
    cfg: IPOMDConfig

    @property
    def sampling_mixture(self) -> SamplingMixture:
        both = self.cfg.mixture_samples == "both"
        return SamplingMixture(self.cfg.mixture_coef, self.max_samples if both else 1)

    # every sample of a prompt, whatever samples_per_prompt is (the worker caps it at n)
    max_samples = 1 << 30


class NashMDConfig(MixtureConfig):
    name: Literal["nash_md"] = "nash_md"
    beta: float = Field(0.1, gt=0, description="KL regularisation to the reference")
    mini_batches: int = Field(1, gt=0, description="optimizer steps per batch")
    mask_truncated_completions: bool = _mask_truncated_field()
    fixed_samples_per_prompt: ClassVar[int] = 2  # rollout.samples_per_prompt unset: this

    def check(self, cfg: Config) -> None:
        self.check_engine(cfg)
        if cfg.samples_per_prompt() != 2:
            raise ValueError(
                "rollout.samples_per_prompt must be 2 for nash_md: one sample from the policy, "
                "one from the mixture"
            )


class NashMD(Algorithm):
    """Nash-MD (Munos et al. 2023) in its policy-gradient form: per prompt y ~ pi_theta and
    y' ~ pi_mix, a judge's P(y > y'), and `nash_md_loss` on y. Only the policy's sample
    trains; a tie (P = 1/2) still carries the KL term."""

    name = "nash_md"
    config = NashMDConfig
    cfg: NashMDConfig

    @property
    def needs(self) -> frozenset[str]:
        return frozenset({"preferences", "ref_logprobs"})

    @property
    def mini_batches(self) -> int:
        return self.cfg.mini_batches

    @property
    def sampling_mixture(self) -> SamplingMixture:
        return SamplingMixture(self.cfg.mixture_coef, 1)

    def arrange(
        self, batch: TrainBatch, comparisons: Comparisons | None
    ) -> tuple[TrainBatch, dict[str, float]]:
        if comparisons is None:
            raise RuntimeError("nash_md: no judge answers (the preferences stage did not run)")
        judged = len(comparisons)
        if self.cfg.mask_truncated_completions:
            comparisons = without_truncated(comparisons, batch["truncated"])
        mixture = batch["from_mixture"] > 0
        rows, probs = [], []
        for a, b, p in zip(comparisons.a, comparisons.b, comparisons.prob, strict=True):
            if not np.isfinite(p) or mixture[a] == mixture[b]:
                continue
            # orient: P(policy sample > mixture sample)
            rows.append(int(b) if mixture[a] else int(a))
            probs.append(float(1.0 - p) if mixture[a] else float(p))
        out = batch.select(np.asarray(rows, dtype=np.int64))
        out["preference"] = np.asarray(probs, dtype=np.float32)
        metrics = {
            "pairs/count": float(len(rows)),
            "pairs/dropped_no_answer": float(int((~np.isfinite(comparisons.prob)).sum())),
            "pairs/dropped_truncated": float(judged - len(comparisons)),
        }
        if rows:
            metrics["nash/preference_mean"] = float(np.mean(probs))
        return out, metrics

    def prepare(self, batch: TrainBatch) -> dict[str, float]:
        # sums over each sequence's tokens, mean over sequences
        batch["loss_weights"] = batch["completion_mask"] / max(len(batch), 1)
        return {}

    def loss(self, out, mb):
        from rlhf.algorithms.preference_losses import nash_md_loss

        mask = mb["completion_mask"]
        w = mb["loss_weights"].sum(-1) / mask.sum(-1).clamp(min=1.0)  # per-sequence weight
        per_seq = nash_md_loss(
            out.logprobs, mb["ref_logprobs"], mask, self.cfg.beta, mb["preference"]
        )
        loss = (w * per_seq).sum()
        kl = ((out.logprobs - mb["ref_logprobs"]).detach() * mask).sum(-1)
        metrics = {
            "loss/total": loss.detach(),
            "kl": (w * kl).sum(),
            "nash/score": (w * (mb["preference"] - 0.5)).sum(),
        }
        return loss, metrics
