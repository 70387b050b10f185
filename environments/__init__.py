"""Built-in agentrl environments, one subpackage per benchmark (imported as ``agentrl.environments``)."""
