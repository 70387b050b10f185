"""Asynchronous actor-learner training, Ray rollout workers and the FSDP2 learner.

Import the pieces from their modules (``agentrl.distributed.actor_learner``, ``.worker``,
``.weights``, ``.fsdp``, ``.ray_local``); this package itself imports nothing heavy.
"""
