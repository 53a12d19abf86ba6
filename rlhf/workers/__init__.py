"""Ray actors: each holds state (an engine, a model, scorers) and exposes a few methods.

The classes are plain Python; `rlhf.workers.pools` wraps them with `ray.remote` and the
resources the topology asks for, so they are also usable (and testable) without Ray.
"""
