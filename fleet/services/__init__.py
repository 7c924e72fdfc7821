"""The fleet layer's writes, by subject: ``vehicles`` (sessions, departures, SoC, derived state), ``stations``
(provisioning for an organisation, ownership), ``accounts`` (organisations, users, API keys); ``errors``
(``FleetError``, the refusal they share)."""
