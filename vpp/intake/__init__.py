"""The regulation intake edges of the orchestrator: signal values and reserve events from a utility.

* :mod:`vpp.intake.api` -- ``POST /api/regulation/signal`` and ``POST /api/regulation/reserve`` (REST).
* :mod:`vpp.intake.consumers` -- ``ws/regulation`` (one authenticated socket, one frame per value).
* :mod:`vpp.intake.auth` -- the WebSocket's token and permission check.

They dispatch through :mod:`vpp.dispatch.services` and store through ``markets.regulation.services``.
"""
