"""Regulation dispatch, the orchestrator's hot path: a signal value becomes one charging profile per EVSE.

``dispatcher`` (the in-memory ``Dispatcher`` per product and portfolio, fan-out, setpoints), ``selectors`` (the state
it loads: routes, fleet arrays, award, reserve in force), ``services`` (the entry points the intake edges call, and
the recorders of what was sent).
"""
