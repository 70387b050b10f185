"""ScienceWorld on its real JVM engine (``agentrl/ScienceWorld-v0``)."""
