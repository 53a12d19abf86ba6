"""Process set-up shared by every worker."""

from __future__ import annotations

import logging
import math
import os


def setup_worker_process(num_cpus: float, seed: int) -> None:
    """Threads follow the topology's CPU share; logs go to the Ray worker log with a prefix."""
    import torch

    threads = int(os.environ.get("RLHF_TORCH_THREADS", max(1, math.ceil(num_cpus))))
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
