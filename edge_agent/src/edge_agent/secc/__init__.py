"""ISO 15118-20 towards the car: the SECC (the charger's side), through Josev (the ``iso15118`` package).

Installed with ``pip install ./edge_agent[iso15118]`` in the agent's own environment (Josev pins cryptography 44 and
pydantic 1, and its EXI codec runs on a Java runtime). Only ``controller``, ``codec`` and ``server`` import Josev;
``car`` is plain Python, so the core agent, its station model and its tests never need it.

- ``car``: the car as the station sees it when a real EV talks ISO 15118-20 (what it reported: SoC, limits, energy
  requests, departure), and the session-log codes of the SECC.
- ``controller``: Josev's ``EVSEControllerInterface`` on the agent's ``Station``: the car's reports go into the
  station's limits and OCPP NotifyEVChargingNeeds; each ACChargeLoopRes carries the station's latest command.
- ``codec``: Josev's EXI codec (EXIficient on Java), warmed up before the first session, watching the message
  pairs it encodes and decodes (timing, and the DisplayParameters Josev drops).
- ``server``: starts Josev's SECC (SDP on UDP 15118, the V2G TCP server) on a network interface.
"""
