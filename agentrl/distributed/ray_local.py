"""Start or join a Ray cluster without phoning home and, for a local one, bound to loopback.

Ray sends usage statistics to a remote URL and listens on the machine's external address by
default; agentrl turns both off before ``ray.init``. ``address="local"`` starts a private cluster
on this machine with light settings; any other value (``ray://host:10001``, ``host:6379``,
``auto``) joins an existing cluster, whose own settings then apply.
"""

from __future__ import annotations

import os
from typing import Any

#: Environment that keeps Ray local and quiet (set before ``import ray`` starts anything).
RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "0",
}


def init_ray(address: str = "local", *, num_cpus: int | None = None, object_store_mb: int = 128) -> bool:
    """Connect to Ray; returns ``True`` when this call started the cluster (the caller shuts it down)."""
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if address in ("", "local"):
        kwargs.update(
            num_cpus=num_cpus or os.cpu_count() or 1,
            object_store_memory=object_store_mb * 2**20,
            _node_ip_address="127.0.0.1",
        )
        ray.init(**kwargs)
        return True
    ray.init(address=address, **kwargs)
    return False


def shutdown_ray(started: bool) -> None:
    """Shut Ray down if this process started the cluster (kills its raylet, GCS and workers)."""
    import ray

    if started and ray.is_initialized():
        ray.shutdown()
