import pytest

from vpp.env import ImproperlyConfiguredEnv, env_bool, env_int, env_url


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
