"""Pure numerics on vehicle snapshots: no Django, no I/O.

The fleet layer's own services, the markets' optimisers and the orchestrator's dispatch all read these:
``snapshot`` (the ``VehicleSnapshot`` every optimiser reads), ``arrays`` (a fleet as NumPy columns),
``thermal`` (derating and wear weights), ``flexibility`` (what a fleet can do over the next hours),
``allocation`` (splitting a fleet setpoint between vehicles) and ``degradation`` (battery wear and its cost).
"""
