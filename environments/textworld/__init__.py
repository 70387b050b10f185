"""TextWorld quests generated locally (``agentrl/TextWorld-v0``)."""
