"""CSMS services for the operator and the layers above: ``provisioning`` (stations, id tokens), ``station_call``
(CSMS-initiated messages), ``heartbeat`` (the timeout sweep). What stations send is in ``chargers.handlers``.
"""
