"""A portfolio's metered energy and mean power, from stored meter values: integer W·s, Wh and W."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.test_openadr2 import _metered_fleet
from vpp.utility.metering import portfolio_metered

pytestmark = pytest.mark.django_db


def test_energy_is_integer_watt_seconds_and_watt_hours() -> None:
    # Given +7,400 W on one charge point and -2,000 W on another, read 30 s ago (held at most 60 s)
    program = UtilityProgramFactory.create()
    _metered_fleet(program)
    end = datetime.now(UTC).replace(microsecond=0)
    # When the 10 s up to now are integrated
    metered = portfolio_metered(portfolio=program.portfolio, start=end - timedelta(seconds=10), end=end)
    # Then 74,000 W·s in and 20,000 W·s out (20.6 and 5.6 Wh, stated as whole Wh), a mean of 5,400 W, all integers
    basis = metered.basis()
    assert (basis["import_ws"], basis["export_ws"], basis["import_wh"], basis["export_wh"]) == (74_000, 20_000, 21, 6)
    assert all(type(basis[k]) is int for k in ("import_ws", "export_ws", "import_wh", "export_wh"))
    assert metered.mean_power_w == 5_400
    assert type(metered.mean_power_w) is int
