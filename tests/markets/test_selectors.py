"""The one lookup of a product by name (markets.selectors.product_get): the intake edges and the commands use it."""

from __future__ import annotations

import pytest

from markets.models import Product
from markets.selectors import product_get
from tests.markets.regulation.data import regulation_product

pytestmark = pytest.mark.django_db


def test_a_product_is_named_operator_colon_code_or_by_a_code_only_one_product_has():
    regd = regulation_product()
    assert product_get(ref="pjm:reg-d") == regd
    assert product_get(ref="reg-d", kind=Product.Kind.REGULATION, active_only=True) == regd


def test_a_name_matching_no_product_or_one_of_another_kind_is_refused_with_the_name():
    regulation_product()
    with pytest.raises(Product.DoesNotExist, match="'pjm:nope'"):
        product_get(ref="pjm:nope")
    with pytest.raises(Product.DoesNotExist, match="regulation product 'pjm:sync-reserve'"):
        product_get(ref="pjm:sync-reserve", kind=Product.Kind.REGULATION)
