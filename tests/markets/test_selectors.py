"""The one lookup of a product by name (markets.selectors.product_get): the intake edges and the commands use it."""

from __future__ import annotations

from datetime import time

import pytest

from markets.models import MarketOperator, Product
from markets.selectors import product_get
from tests.markets.regulation.data import regulation_product

pytestmark = pytest.mark.django_db


def test_a_product_is_named_operator_colon_code():
    regd = regulation_product()
    assert product_get(ref="pjm:reg-d") == regd
    assert product_get(ref="pjm:reg-d", kind=Product.Kind.REGULATION, active_only=True) == regd


@pytest.mark.parametrize("ref", ["reg-d", ":reg-d", "pjm:", ""])
def test_it_refuses_a_name_without_its_operator(ref: str) -> None:
    # Another operator may sell a product under the same code: a bare code could route a signal to it.
    regulation_product()
    with pytest.raises(Product.DoesNotExist, match="operator:code"):
        product_get(ref=ref, kind=Product.Kind.REGULATION, active_only=True)


def test_it_never_takes_another_operators_product_of_the_same_code() -> None:
    # Given pjm:reg-d inactive and another operator's active reg-d
    regd = regulation_product()
    Product.objects.filter(pk=regd.pk).update(active=False)
    other = Product.objects.create(
        operator=MarketOperator.objects.create(
            code="other", name="Other RTO", timezone="UTC", interval_minutes=60, gate_closure_local=time(10, 0)
        ),
        code="reg-d",
        name="Other RegD",
        kind=Product.Kind.REGULATION,
        direction=regd.direction,
    )
    # Then pjm:reg-d is refused as inactive, and other:reg-d is only reached by its own name
    with pytest.raises(Product.DoesNotExist, match="'pjm:reg-d'"):
        product_get(ref="pjm:reg-d", kind=Product.Kind.REGULATION, active_only=True)
    assert product_get(ref="other:reg-d", kind=Product.Kind.REGULATION, active_only=True) == other


def test_a_name_matching_no_product_or_one_of_another_kind_is_refused_with_the_name():
    regulation_product()
    with pytest.raises(Product.DoesNotExist, match="'pjm:nope'"):
        product_get(ref="pjm:nope")
    with pytest.raises(Product.DoesNotExist, match="regulation product 'pjm:sync-reserve'"):
        product_get(ref="pjm:sync-reserve", kind=Product.Kind.REGULATION)
