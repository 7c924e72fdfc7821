from decimal import Decimal

import pytest

from vpp.env import ImproperlyConfiguredEnv, env_bool, env_decimal, env_float, env_int, env_url


def test_it_refuses_a_boolean_typo(monkeypatch: pytest.MonkeyPatch) -> None:
    # given a DEBUG value that is not a boolean
    monkeypatch.setenv("DEBUG", "ture")
    # when / then it fails loudly rather than meaning False
    with pytest.raises(ImproperlyConfiguredEnv, match="DEBUG"):
        env_bool("DEBUG", False)


def test_it_reads_integers_within_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_INT", "7")
    assert env_int("X_INT", 1, minimum=1, maximum=10) == 7
    monkeypatch.setenv("X_INT", "70")
    with pytest.raises(ImproperlyConfiguredEnv, match="maximum"):
        env_int("X_INT", 1, minimum=1, maximum=10)


def test_it_refuses_a_url_with_the_wrong_scheme(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "http://127.0.0.1:6379")
    with pytest.raises(ImproperlyConfiguredEnv, match="scheme"):
        env_url("REDIS_URL", schemes=("redis", "rediss"))


def test_unset_url_means_embedded_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    assert env_url("REDIS_URL", schemes=("redis",)) is None


@pytest.mark.parametrize(
    ("read", "raw", "message"),
    [
        (lambda: env_int("X_NUM", 1), "7.5", "is not an integer"),
        (lambda: env_float("X_NUM", 1.0), "fast", "is not a number"),
        (lambda: env_float("X_NUM", 1.0, minimum=0.5), "0.25", "below its minimum 0.5"),
        (lambda: env_decimal("X_NUM", Decimal(1)), "1,5", "is not a decimal number"),
    ],
)
def test_it_refuses_a_bad_number_naming_the_variable(monkeypatch: pytest.MonkeyPatch, read, raw, message) -> None:
    monkeypatch.setenv("X_NUM", raw)
    with pytest.raises(ImproperlyConfiguredEnv, match="X_NUM") as refused:
        read()
    assert message in str(refused.value)


def test_numbers_are_parsed_and_blank_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_NUM", " 2.5 ")
    assert (env_float("X_NUM", 1.0), env_decimal("X_NUM", Decimal(1))) == (2.5, Decimal("2.5"))
    monkeypatch.setenv("X_NUM", "  ")
    assert (env_int("X_NUM", 3), env_float("X_NUM", 1.5), env_decimal("X_NUM", Decimal("0.1"))) == (
        3,
        1.5,
        Decimal("0.1"),
    )
