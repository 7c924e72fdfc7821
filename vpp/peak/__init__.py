"""Real-time peak shaving: each site-meter reading -> the fleet power that keeps the site under its planned cap ->
allocation -> one SetChargingProfile per car at the site (``vpp.peak.shaver``)."""
