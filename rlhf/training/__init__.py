"""DeepSpeed training (the learner and the critic): engine set-up, the train step, and full-weight export.

Plain modules (no Ray): `rlhf.workers.learner.LearnerWorker` is the thin actor around them.
"""
