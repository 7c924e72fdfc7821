"""The edge agent's profile-3 client key may be encrypted (PKCS#8, as ``manage.py pki station-cert`` writes it): its
passphrase comes from a file or the environment, never the TOML file nor argv, and an encrypted key without it is
refused with a clear error instead of OpenSSL prompting on a terminal nobody watches. Keys and certificates are made
here with ``cryptography``."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edge_agent.config import ConfigError, load_config
from edge_agent.tls import TlsKeyError, client_context, key_passphrase_from_env

PASSPHRASE = "station-key-passphrase-01"


def encrypted_credentials(tmp_path: Path) -> tuple[str, str]:
    """A station certificate and its key as encrypted PKCS#8 PEM: (cert file, key file)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cs-1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cs-1.pem", tmp_path / "cs-1.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(PASSPHRASE.encode()),
        )
    )
    return str(cert_file), str(key_file)


def test_it_loads_an_encrypted_key_with_its_passphrase(tmp_path: Path) -> None:
    # Given a certificate and its encrypted key / When a client context is made with the passphrase
    cert_file, key_file = encrypted_credentials(tmp_path)
    context = client_context(cert_file=cert_file, key_file=key_file, key_passphrase=PASSPHRASE)
    # Then it is a verifying TLS 1.2+ context
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize("passphrase", ["", "not-the-passphrase"])
def test_it_refuses_an_encrypted_key_without_its_passphrase_instead_of_prompting(
    tmp_path: Path, passphrase: str
) -> None:
    cert_file, key_file = encrypted_credentials(tmp_path)
    with pytest.raises(TlsKeyError, match="cannot load the client certificate"):
        client_context(cert_file=cert_file, key_file=key_file, key_passphrase=passphrase)


def test_the_passphrase_comes_from_a_file_or_the_environment(tmp_path: Path) -> None:
    passphrase_file = tmp_path / "key-pass"
    passphrase_file.write_text(PASSPHRASE + "\n")
    assert key_passphrase_from_env({"EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE": str(passphrase_file)}) == PASSPHRASE
    assert key_passphrase_from_env({"EDGE_AGENT_TLS_KEY_PASSPHRASE": "from-env"}) == "from-env"
    assert key_passphrase_from_env({}) == ""


def test_the_agent_config_reads_the_passphrase_from_its_file_and_never_from_the_toml(tmp_path: Path) -> None:
    # Given an agent config naming an encrypted key and a passphrase file
    cert_file, key_file = encrypted_credentials(tmp_path)
    passphrase_file = tmp_path / "key-pass"
    passphrase_file.write_text(PASSPHRASE + "\n")
    config = tmp_path / "agent.toml"
    base = (
        f'station_id = "cs-1"\ncsms_url = "wss://h/ocpp"\n[tls]\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
    )
    config.write_text(base + f'key_passphrase_file = "{passphrase_file}"\n')
    # When it is loaded / Then the passphrase opens the key
    cfg = load_config(config, env={})
    assert cfg.tls.key_passphrase == PASSPHRASE
    client_context(cert_file=cfg.tls.cert_file, key_file=cfg.tls.key_file, key_passphrase=cfg.tls.key_passphrase)
    # and a passphrase written in the TOML file itself is refused
    config.write_text(base + f'key_passphrase = "{PASSPHRASE}"\n')
    with pytest.raises(ConfigError, match="key_passphrase belongs in env"):
        load_config(config, env={})
