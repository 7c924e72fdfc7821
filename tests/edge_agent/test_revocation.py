"""A signing certificate's revocation, from its issuer's CRL (RFC 5280) fetched over HTTP and cached: a listed
certificate is refused, a CRL anyone else signed or an older one replayed changes nothing, and without a fresh CRL
nothing is taken as not revoked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from edge_agent.config import load_config
from edge_agent.revocation import (
    CertificateRevoked,
    CrlSettings,
    RevocationUnknown,
    default_crl_url,
    revocation_check,
)
from tests.edge_agent.firmware_kit import Ca, PackageServer, Signer, make_ca, make_crl, make_signer


@pytest.fixture
def repo() -> Iterator[PackageServer]:
    server = PackageServer().start()
    yield server
    server.stop()


@pytest.fixture
def ca() -> Ca:
    return make_ca()


@pytest.fixture
def signer(ca: Ca) -> Signer:
    return make_signer(ca)


def _settings(repo: PackageServer, tmp_path: Path, **overrides: object) -> CrlSettings:
    values: dict[str, object] = {"url": repo.url("/pki/crl"), "cache_dir": str(tmp_path / "crl"), "grace_s": 3600.0}
    return CrlSettings(**{**values, **overrides})  # type: ignore[arg-type]


def _check(signer: Signer, ca: Ca, settings: CrlSettings) -> None:
    revocation_check(signer.cert, ca.cert, settings, now=datetime.now(UTC))


def test_a_certificate_its_issuer_lists_is_refused_and_one_it_does_not_is_not(ca, signer, repo, tmp_path):
    # Given the issuer's CRL listing one signing certificate
    revoked, kept = make_signer(ca), signer
    repo.files["/pki/crl"] = ca.crl(revoked.cert)
    settings = _settings(repo, tmp_path)
    # When both are checked / Then the listed one is refused, naming its serial, and the other passes
    with pytest.raises(CertificateRevoked, match=f"{revoked.cert.serial_number:x}"):
        _check(revoked, ca, settings)
    _check(kept, ca, settings)


def test_a_crl_someone_else_signed_is_ignored(ca, signer, repo, tmp_path):
    # Given a CRL in the issuer's name but signed with another key, listing nothing
    repo.files["/pki/crl"] = make_crl(ca.cert.subject, ec.generate_private_key(ec.SECP256R1()))
    # When the certificate is checked with no other CRL to be had
    # Then it is not taken as not revoked: the revocation status is unknown
    with pytest.raises(RevocationUnknown, match="not signed by"):
        _check(signer, ca, _settings(repo, tmp_path))


def test_neither_a_forged_nor_an_older_crl_undoes_a_cached_revocation(ca, signer, repo, tmp_path):
    # Given the issuer's CRL listing the certificate, fetched once (and so cached)
    settings = _settings(repo, tmp_path)
    repo.files["/pki/crl"] = ca.crl(signer.cert)
    with pytest.raises(CertificateRevoked):
        _check(signer, ca, settings)
    # When the CRL location then serves a newer forgery, and then a genuine but older CRL from before the revocation
    # (still within its validity), each listing nothing
    answers = {
        "forged": make_crl(ca.cert.subject, ec.generate_private_key(ec.SECP256R1())),
        "replayed": ca.crl(updated_days_ago=0.5),
    }
    for answer in answers.values():
        repo.files["/pki/crl"] = answer
        # Then the certificate stays revoked
        with pytest.raises(CertificateRevoked):
            _check(signer, ca, settings)


def test_the_cached_crl_serves_while_the_location_is_unreachable_and_until_its_grace_ends(ca, signer, repo, tmp_path):
    # Given a good CRL fetched once, and the location then gone
    repo.files["/pki/crl"] = ca.crl()
    _check(signer, ca, _settings(repo, tmp_path))
    del repo.files["/pki/crl"]
    # When the certificate is checked again / Then the cached CRL answers
    _check(signer, ca, _settings(repo, tmp_path))
    # And once the only CRL there is is past its nextUpdate by more than the grace, the answer is "unknown"
    stale = tmp_path / "stale"
    repo.files["/pki/crl"] = ca.crl(updated_days_ago=3, valid_days=1)
    with pytest.raises(RevocationUnknown, match="stale"):
        _check(signer, ca, _settings(repo, stale, grace_s=86_400.0))
    _check(signer, ca, _settings(repo, stale, grace_s=3 * 86_400.0))


def test_without_a_crl_location_or_cache_the_status_is_unknown(ca, signer, tmp_path):
    with pytest.raises(RevocationUnknown, match="crl_url"):
        revocation_check(signer.cert, ca.cert, CrlSettings(), now=datetime.now(UTC))


@pytest.mark.parametrize(
    ("csms_url", "crl_url"),
    [
        ("wss://csms.example.com/ocpp", "https://csms.example.com/pki/crl"),
        ("ws://10.0.0.5:8080/ocpp/", "http://10.0.0.5:8080/pki/crl"),
        ("wss://example.com:8043/csms/ocpp", "https://example.com:8043/csms/pki/crl"),
    ],
)
def test_by_default_the_agent_asks_its_csms_for_the_crl(tmp_path, csms_url, crl_url):
    # Given an agent configuration naming only its CSMS
    cfg = load_config(
        None,
        env={"EDGE_AGENT_STATION_ID": "cs-1", "EDGE_AGENT_CSMS_URL": csms_url, "EDGE_AGENT_VAR_DIR": str(tmp_path)},
    )
    # Then the CRL comes from the CSMS, over https when the CSMS is reached over wss://, and is cached in var_dir
    assert default_crl_url(csms_url) == crl_url
    assert cfg.firmware_crl().url == crl_url
    assert cfg.firmware_crl().cache_dir == str(tmp_path / "crl")
