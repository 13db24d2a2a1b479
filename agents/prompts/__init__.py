"""Versioned prompt text files of the agents (one `<name>.txt` per prompt), loaded by `agents.prompting`."""
