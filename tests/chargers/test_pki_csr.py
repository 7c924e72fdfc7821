"""The CSR checks alone (``chargers.pki.csr``): which keys, signatures, subjects and extensions a station may ask
the CPO sub-CA to certify. Keys and CSRs are made with ``cryptography``; the verdicts follow OCPP 2.0.1's key
requirements (EC P-256/P-384 or RSA >= 2048) and RFC 5280."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from chargers.pki.csr import CsrRefused, csr_check


def make_csr(
    key: Any,
    *,
    names: tuple[str, ...] = ("cs-1",),
    hash_algorithm: hashes.SHA224 | hashes.SHA256 | None = None,
    org: str = "",
    key_usage: x509.KeyUsage | None = None,
) -> str:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name) for name in names]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if hash_algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):  # Ed25519 takes no hash
        hash_algorithm = hashes.SHA256()
    signed = builder.sign(key, hash_algorithm)
    return signed.public_bytes(serialization.Encoding.PEM).decode()


def cert_signing_usage() -> x509.KeyUsage:
    flags = dict.fromkeys(
        ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment", "key_agreement",
         "key_cert_sign", "crl_sign", "encipher_only", "decipher_only"),
        False,
    )  # fmt: skip
    return x509.KeyUsage(**{**flags, "digital_signature": True, "key_cert_sign": True})


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(lambda: ec.generate_private_key(ec.SECP256R1()), id="p-256"),
        pytest.param(lambda: ec.generate_private_key(ec.SECP384R1()), id="p-384"),
        pytest.param(lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), id="rsa-2048"),
    ],
)
def test_it_accepts_the_keys_ocpp_allows(key: Callable[[], Any]) -> None:
    private = key()
    checked = csr_check(pem=make_csr(private), station_id="cs-1", organisation="")
    assert checked.public_key == private.public_key()


@pytest.mark.parametrize(
    ("pem", "reason"),
    [
        pytest.param(lambda: make_csr(ec.generate_private_key(ec.SECP521R1())), "secp521r1", id="p-521"),
        pytest.param(lambda: make_csr(ed25519.Ed25519PrivateKey.generate()), "Ed25519", id="ed25519"),
        pytest.param(
            lambda: make_csr(rsa.generate_private_key(public_exponent=3, key_size=2048)), "exponent 3", id="rsa-e3"
        ),
        pytest.param(
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1()), hash_algorithm=hashes.SHA224()),
            "sha224",
            id="sha224",
        ),
        pytest.param(
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1()), names=("cs-1", "cs-2")), "2 CNs", id="two-cns"
        ),
        pytest.param(
            lambda: make_csr(ec.generate_private_key(ec.SECP256R1()), key_usage=cert_signing_usage()),
            "keyCertSign",
            id="cert-signing",
        ),
        pytest.param(lambda: "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * 5500, "longer than", id="oversized"),
    ],
)
def test_it_refuses_what_ocpp_does_not_allow(pem: Callable[[], str], reason: str) -> None:
    with pytest.raises(CsrRefused, match=reason):
        csr_check(pem=pem(), station_id="cs-1", organisation="")


def test_an_owner_is_checked_only_when_the_csr_names_one() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    assert csr_check(pem=make_csr(key), station_id="cs-1", organisation="Depot Co").organisation == "Depot Co"
    with pytest.raises(CsrRefused, match="owner"):
        csr_check(pem=make_csr(key, org="Other"), station_id="cs-1", organisation="Depot Co")
