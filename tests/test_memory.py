"""Per-iteration memory of a process (rlhf/telemetry/memory.py): the peak of the interval since the last
reading, not of the process's life, and each pool's largest worker."""

from __future__ import annotations

import numpy as np

from rlhf.telemetry.memory import pool_memory, process_memory

MIB = 2**20


def test_the_peak_is_the_intervals_and_then_starts_again():
    process_memory()  # start an interval
    block = np.ones(512 * MIB, dtype=np.uint8)  # 0.5 GiB, touched
    during = process_memory(reset_peak=False)
    del block
    after = process_memory()  # the interval that held the block; resets the peak
    fresh = process_memory()
    assert during["rss_gib"] >= 0.5 and after["peak_gib"] >= 0.5
    assert after["rss_gib"] < during["rss_gib"] - 0.4  # the block was given back
    # the next interval never held it: its peak is about what the process holds now
    assert fresh["peak_gib"] < after["peak_gib"] - 0.4


def test_a_pool_reports_its_largest_worker():
    reports = [{"peak_gib": 1.5, "rss_gib": 1.0}, {"peak_gib": 2.5, "rss_gib": 0.5}]
    assert pool_memory("learner", reports) == {
        "memory/learner/peak_gib": 2.5,
        "memory/learner/rss_gib": 1.0,
    }
