"""V2G edge agent: runs on each charger's gateway. Never imports Django."""

__version__ = "0.1.0"
