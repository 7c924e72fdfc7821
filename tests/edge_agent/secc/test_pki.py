"""The SECC's TLS files, checked and laid out where Josev reads them (Josev's fixed names, from its CertPath/KeyPath).

Certificates are made here with ``cryptography`` alone: a CPO sub-CA issuing the SECC leaf (serverAuth), an OEM root.
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edge_agent.config import ConfigError, load_config
from edge_agent.secc.pki import SeccTlsError, SeccTlsFiles, josev_pki_dir

PASSPHRASE = "secc-key-passphrase"


def _cert(cn: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
          *, ca: bool, eku: x509.ObjectIdentifier | None = None) -> x509.Certificate:  # fmt: skip
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def files(tmp_path: Path, *, eku: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
          other_key: bool = False, passphrase: str = PASSPHRASE, ev_ca_is_ca: bool = True) -> SeccTlsFiles:  # fmt: skip
    sub_key, leaf_key, oem_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    sub = _cert("CPO Sub-CA", sub_key, None, ca=True)
    leaf = _cert("edge-1", leaf_key, (sub, sub_key), ca=False, eku=eku)
    (tmp_path / "secc.pem").write_bytes(_pem(leaf, sub))
    key = ec.generate_private_key(ec.SECP256R1()) if other_key else leaf_key
    encrypted = serialization.BestAvailableEncryption(PASSPHRASE.encode())
    (tmp_path / "secc.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
    )
    (tmp_path / "oem.pem").write_bytes(_pem(_cert("OEM Root CA", oem_key, None, ca=ev_ca_is_ca)))
    return SeccTlsFiles(tmp_path / "secc.pem", tmp_path / "secc.key", tmp_path / "oem.pem", key_passphrase=passphrase)


def test_the_files_land_under_josevs_names_with_the_key_and_passphrase_owner_only(tmp_path: Path) -> None:
    # given the SECC chain, its encrypted key and the OEM root
    tls = files(tmp_path)
    # when they are laid out for Josev
    root = josev_pki_dir(tls, tmp_path / "josev")
    # then Josev finds them under its fixed names, the secrets 0600 in 0700 directories
    certs, keys = root / "iso15118_2" / "certs", root / "iso15118_2" / "private_keys"
    assert (certs / "cpoCertChain.pem").read_bytes() == tls.cert_file.read_bytes()
    assert (certs / "oemRootCACert.pem").read_bytes() == tls.ev_ca_file.read_bytes()
    assert (keys / "seccLeaf.key").read_bytes() == tls.key_file.read_bytes()
    assert (keys / "seccLeafPassword.txt").read_text() == PASSPHRASE
    for secret in (keys / "seccLeaf.key", keys / "seccLeafPassword.txt"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"other_key": True}, "not the key of"),
        ({"passphrase": "wrong-passphrase"}, "key_file"),
        ({"passphrase": ""}, "key_file"),
        ({"eku": ExtendedKeyUsageOID.CLIENT_AUTH}, "serverAuth"),
        ({"ev_ca_is_ca": False}, "not a CA"),
    ],
)
def test_it_refuses_files_that_cannot_serve_tls_instead_of_letting_josev_fall_back_to_tcp(
    tmp_path: Path, kwargs: dict[str, object], says: str
) -> None:
    # given SECC files with one mistake, when they are laid out, then the agent stops with a clear error
    with pytest.raises(SeccTlsError, match=says):
        josev_pki_dir(files(tmp_path, **kwargs), tmp_path / "josev")  # type: ignore[arg-type]
    assert not (tmp_path / "josev").exists()


def test_the_three_tls_settings_go_together_and_the_passphrase_comes_from_the_environment(tmp_path: Path) -> None:
    base = {"EDGE_AGENT_STATION_ID": "edge-1", "EDGE_AGENT_CSMS_URL": "ws://csms/ocpp",
            "EDGE_AGENT_ISO15118_INTERFACE": "eth1"}  # fmt: skip
    tls = {"EDGE_AGENT_ISO15118_CERT_FILE": "secc.pem", "EDGE_AGENT_ISO15118_KEY_FILE": "secc.key",
           "EDGE_AGENT_ISO15118_EV_CA_FILE": "oem.pem"}  # fmt: skip
    # given the certificate without the OEM roots, then the configuration is refused
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, env={**base, **{k: v for k, v in tls.items() if "EV_CA" not in k}})
    # given all three and the passphrase in a file, then it is read from the file
    (tmp_path / "pass").write_text(PASSPHRASE + "\n")
    cfg = load_config(None, env={**base, **tls, "EDGE_AGENT_ISO15118_KEY_PASSPHRASE_FILE": str(tmp_path / "pass")})
    assert cfg.iso15118.key_passphrase == PASSPHRASE
    assert PASSPHRASE not in repr(cfg)
    # and the passphrase is never taken from the TOML file
    (tmp_path / "agent.toml").write_text('[iso15118]\nkey_passphrase = "in-the-file"\n')
    with pytest.raises(ConfigError, match="belongs in env"):
        load_config(tmp_path / "agent.toml", env={**base, **tls})
