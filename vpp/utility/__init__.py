"""Utility interfaces: the aggregator as a client of the servers utilities run (OpenADR 2.0b and 3.0 VENs, an
IEEE 2030.5 / CSIP aggregator client).

It turns a utility's events into dispatch through the orchestrator's own intake services (``vpp.dispatch.services``:
the path the signal and reserve REST API takes), so it sits in ``vpp`` above ``markets``; nothing below imports it.

* ``models`` -- programs (configuration and connection status), their audit trail, events and reports as received
  and sent;
* ``services`` -- configuration writes (audited), connection status, event and report records;
  ``selectors`` -- reads, tenancy, credentials (files and environment, never the database);
* ``dispatch`` -- an event -> a reserve deployment of the portfolio, and its setpoints sent on time;
* ``metering`` -- telemetry and the metered response of an event, from stored meter values;
* ``openadr2`` / ``openadr3`` / ``csip`` -- the protocol clients (``openleadr``; ``httpx`` on the OpenADR 3 and
  2030.5 documents), run by ``manage.py utility run`` (``runner``);
* ``api`` / ``views`` -- the REST configuration and the status pages.
"""
