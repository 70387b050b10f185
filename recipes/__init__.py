"""Training recipes, one script per (benchmark, algorithm); run with ``agentrl train NAME``."""
