"""Code-execution sandboxes (imported as ``agentrl.sandboxes``)."""
