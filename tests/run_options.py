"""Overrides shared by the tests that launch whole runs where the topology is not the subject."""

from __future__ import annotations

# One rollout worker and one learner rank: each process fewer to start saves ~5 s on 2 cores
# (tests/test_integration.py and the default run keep two of each).
ONE_EACH = ("topology.rollout.workers=1", "topology.learner.workers=1")
# No Ray dashboard (nothing these tests read): ~2.5 s less start-up CPU a run.
NO_DASHBOARD = "ray.include_dashboard=false"
