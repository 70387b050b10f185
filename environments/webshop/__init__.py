"""WebShop text environment reimplemented in plain Python (``agentrl/WebShop-v0``)."""
