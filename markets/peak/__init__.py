"""Depot peak shaving: the site meter's time series, the demand-charge tariff, the load forecast, the plan the
real-time dispatch holds the site to, and the settlement of the demand charge avoided (see README "Peak shaving")."""
