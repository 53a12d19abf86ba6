"""Comparing policies: `rlhf eval`'s win rate, and what a run's greedy evaluation scores with."""
