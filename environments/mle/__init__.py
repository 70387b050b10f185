"""ML-engineering tasks run in sandboxes (``agentrl/MLE-v0``)."""
