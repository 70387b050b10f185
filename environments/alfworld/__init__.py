"""ALFWorld on its real TextWorld/PDDL engine (``agentrl/ALFWorld-v0``)."""
