"""The bidding side's write path, one module per subject (regulation's is in ``markets.regulation``). Import from
the module itself; this package re-exports nothing. Lower modules first; each imports only those above it:

- ``bids``: the bid lifecycle (``bid_transition``, ``bid_edit``, ``bids_transition``), quantity and price
  validation, ``gate_closure``; the errors (``MarketError``, ``StaleBid``, ``CsvImportError``), who acts (``Actor``)
  and the audit trail (``bid_event_record``).
- ``prices``: price beliefs (PJM synchronized-reserve report, generic CSV, forecast from history) and a depot's
  site-meter load.
- ``clearing``: the market's answer (``award_record``) and the simulated operator (``market_clear_simulated``).
- ``exchange``: CSV exchange with real markets (``bids_export_csv``, ``awards_import_csv``).
- ``proposals``: optimiser proposals (``delivery_window``, ``proposal_request`` / ``_claim`` / ``_rerun`` / ``_run``).
"""
