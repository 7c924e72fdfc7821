"""Regulation market: signals, reserve deployments, performance scores, settlement (models stay in the markets app)."""
