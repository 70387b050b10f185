"""The learner: batches of episodes to weight updates.

``learner.Learner`` (the update loop, checkpoints), ``config.LearnerConfig`` (typed settings),
``rows`` (episodes -> per-step rows and padded micro-batches), ``logprobs.token_logprobs_entropy``
(the one place the model is scored), ``optim`` (AdamW + warm-up/cosine), ``metrics`` (JSONL,
TensorBoard, W&B), ``run`` (a recipe's run directory: never overwritten, checkpoints, exact resume,
console lines and progress bars). Import the submodules directly; this package imports nothing.
"""
