"""Trajectory store on SQLAlchemy: SQLite by default (WAL), PostgreSQL for many writers and machines.

    from agentrl.store import open_store
    with open_store("sqlite:///runs.db") as store:
        run_id = store.start_run("alfworld-grpo", env_id="agentrl/ALFWorld-v0", kind="train")
        store.write_episode(run_id, episode)            # atomic: all steps or nothing
        recent = store.read_episodes(run_id, policy_versions=(v - 2, v), won=True)

Episodes go in and come out as :class:`agentrl.trajectory.Episode`, every field exact (token ids,
logprobs and entropies included). Importing this package imports SQLAlchemy, so ``import agentrl``
does not import it.
"""

from agentrl.store.engine import upgrade_schema
from agentrl.store.errors import StoreError
from agentrl.store.models import SCHEMA_HEAD
from agentrl.store.store import DEFAULT_URL, RunInfo, Store, open_store

__all__ = ["DEFAULT_URL", "SCHEMA_HEAD", "RunInfo", "Store", "StoreError", "open_store", "upgrade_schema"]
