"""Run-time data shipped with the agent (see README.md here for provenance)."""
