"""Regulation replay: a signal file followed by a simulated fleet over real sockets, then scored.

``harness`` runs it (a live CSMS, simulated edge agents, fleet registration, the award, following the signal);
``results`` reads what was stored back into rows and scores them.
"""
