"""Money and market units on the pages: ``{{ amount|money:"USD" }}`` -> ``$1,234.56``, ``{{ price|price:operator }}``
-> ``$12.50/MW-h``, ``{{ watts|mw }}`` -> ``1.2``.

Amounts stay ``Decimal`` (never float) and round half to even, as settlement does. A currency with a symbol of its
own (USD, EUR, GBP, JPY ...) is written with it; any other ISO 4217 code after the number (``1,234.56 CHF``).
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from django import template

register = template.Library()

SYMBOLS = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "CAD": "CA$", "AUD": "A$", "INR": "₹", "KRW": "₩"}
NO_MINOR_UNIT = {"JPY", "KRW"}
PRICE_UNITS = {"per_mw_h": "MW-h", "per_kw_month": "kW-month"}


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value))
    except InvalidOperation:
        return None


def money_text(amount: Any, currency: str = "USD", places: int | None = None) -> str:
    """``amount`` in ``currency``, thousands separated, to the currency's minor unit (or ``places``): ``-$1,234.56``;
    an empty string for no amount."""
    number = _decimal(amount)
    if number is None:
        return ""
    code = (currency or "").upper()
    digits = places if places is not None else (0 if code in NO_MINOR_UNIT else 2)
    rounded = number.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_EVEN)
    sign = "-" if rounded < 0 else ""
    text = f"{abs(rounded):,.{digits}f}"
    symbol = SYMBOLS.get(code)
    return f"{sign}{symbol}{text}" if symbol else f"{sign}{text} {code}".strip()


def currency_symbol(currency: str) -> str:
    """The symbol the pages write for ``currency`` (its ISO code when it has none of its own)."""
    return SYMBOLS.get((currency or "").upper(), (currency or "").upper())


def price_unit(operator: Any) -> str:
    """``$/MW-h`` for an operator pricing capacity per MW and hour in USD; ``€/kW-month`` ..."""
    return f"{currency_symbol(operator.currency)}/{PRICE_UNITS.get(operator.price_unit, operator.price_unit)}"


@register.filter
def money(amount: Any, currency: str = "USD") -> str:
    return money_text(amount, currency)


@register.filter
def price(amount: Any, operator: Any) -> str:
    """A price in the operator's currency and unit, to its price tick's decimals (at least the cents)."""
    if _decimal(amount) is None:
        return ""
    tick = _decimal(getattr(operator, "price_tick", None)) or Decimal("0.01")
    places = max(2, -int(tick.normalize().as_tuple().exponent))
    unit = PRICE_UNITS.get(operator.price_unit, operator.price_unit)
    return f"{money_text(amount, operator.currency, places)}/{unit}"


@register.filter
def unit_of(operator: Any) -> str:
    return price_unit(operator)


@register.filter
def mw(watts: Any, places: int = 1) -> str:
    """Watts as MW with ``places`` decimals (``1,200,000`` -> ``1.2``)."""
    number = _decimal(watts)
    if number is None:
        return ""
    return f"{(number / Decimal(1_000_000)).quantize(Decimal(1).scaleb(-int(places))):,}"


@register.filter
def kw(watts: Any) -> str:
    """Watts as kW, plain (``400000`` -> ``400``): a value a number input takes."""
    number = _decimal(watts)
    if number is None:
        return ""
    return f"{(number / Decimal(1000)).normalize():f}"


@register.filter
def kwh(wh: Any) -> str:
    """Wh as kWh to one decimal, thousands separated (``125000`` -> ``125.0``)."""
    number = _decimal(wh)
    if number is None:
        return ""
    return f"{(number / Decimal(1000)).quantize(Decimal('0.1')):,}"
