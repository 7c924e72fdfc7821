"""The bidding side's write path (regulation's is in ``markets.regulation``). Import from the module itself:

- ``bids``: the bid lifecycle (transition, edit, validation, gate closure), ``MarketError``, ``StaleBid``,
  ``Actor`` and the audit trail.
"""
