"""`topology.learner.workers: auto`: the learner's DeepSpeed rank count, from the model and the
machine, decided when a run starts (the run folder's config.yaml keeps 'auto'; a resume takes
the count its checkpoint was written with).

On CPU the ranks share the machine's cores, so a second rank adds no compute: it splits each
step's rows in two, which pays on small models (processes beat threads on small matrices), and
holds a second copy of the weights (ZeRO-2 splits the optimizer state and gradients, not them).
Measured on 2 cores (benchmarks/results/learner_ranks.md): two ranks train 1.2x faster at 1M
parameters and 2% faster at 11M; at 104M one rank is as fast and takes a third less memory.
On GPUs a rank needs a device of its own: auto gives one, and more is the user's number.
"""

from __future__ import annotations

import math
from pathlib import Path

from rlhf.config import Config
from rlhf.workers.common import colocated_cores

# Above this many parameters one CPU rank is as fast as two with less memory (a round number
# between the 11M and 104M measurements; near it the two differ by a few percent).
TWO_CPU_RANKS_MAX_PARAMETERS = 50_000_000


def model_parameters(folder: str) -> int:
    """Parameters in a Hugging Face folder, read from its safetensors headers (no weights
    loaded); from its config on the meta device when it has none."""
    files = sorted(Path(folder).glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        total = 0
        for f in files:
            with safe_open(str(f), "pt") as st:
                for name in st.keys():
                    total += math.prod(st.get_slice(name).get_shape())
        return total
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def auto_learner_ranks(parameters: int, cores: int, on_gpus: bool) -> tuple[int, str]:
    """(ranks, why) for a policy of `parameters` on a machine with `cores` cores."""
    size = f"{parameters / 1e6:.1f}M parameters"
    if on_gpus:
        return 1, f"{size}, GPUs: one rank (set topology.learner.workers to use more GPUs)"
    if cores < 2:
        return 1, f"{size}, 1 core"
    if parameters <= TWO_CPU_RANKS_MAX_PARAMETERS:
        return 2, f"{size}, at most {TWO_CPU_RANKS_MAX_PARAMETERS / 1e6:.0f}M on CPU cores"
    return 1, (
        f"{size}, over {TWO_CPU_RANKS_MAX_PARAMETERS / 1e6:.0f}M on CPU cores "
        "(a second rank is no faster and holds a second copy of the weights)"
    )


def resolve_learner_ranks(
    cfg: Config, model_path: str, checkpoint_ranks: int | None = None
) -> str | None:
    """Replace `topology.learner.workers: auto` in `cfg` with a number (the run folder's
    config.yaml keeps 'auto'); the line saying why, or None when the number was given. A
    resumed run takes its checkpoint's count: DeepSpeed reloads onto as many ranks."""
    learner = cfg.topology.learner
    if learner.workers != "auto":
        return None
    if checkpoint_ranks:
        learner.workers = checkpoint_ranks
        return (
            f"learner ranks: {checkpoint_ranks} (topology.learner.workers=auto: the checkpoint's)"
        )
    cores = colocated_cores(cfg.topology)
    ranks, why = auto_learner_ranks(model_parameters(model_path), cores, learner.num_gpus > 0)
    learner.workers = ranks
    return f"learner ranks: {ranks} (topology.learner.workers=auto: {why})"
