"""``edge-agent apply-config``: a configuration bundle is installed only when signed under the trust anchor by a
certificate its issuer's CRL does not list."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from edge_agent.cli import main
from tests.edge_agent.firmware_kit import Ca, PackageServer, Signer, make_ca, make_signer

CURRENT = 'station_id = "edge-1"\ncsms_url = "wss://csms.example.com/ocpp"\n'
NEW = 'station_id = "edge-1"\ncsms_url = "wss://csms-2.example.com/ocpp"\n[control]\nfloor_soc = 0.3\n'


def _files(tmp_path: Path, signer: Signer, bundle: bytes, signature: str) -> list[str]:
    (tmp_path / "new.toml").write_bytes(bundle)
    (tmp_path / "new.sig").write_text(signature + "\n")
    (tmp_path / "signer.pem").write_text(signer.cert_pem())
    return ["--bundle", str(tmp_path / "new.toml"), "--signature", str(tmp_path / "new.sig"),
            "--cert", str(tmp_path / "signer.pem")]  # fmt: skip


@dataclass
class Installed:
    config: Path  # the agent's TOML, naming the trust anchor and where the CA's CRL is
    anchor: Path
    ca: Ca
    crl: PackageServer  # serves the CA's CRL at /pki/crl

    def firmware(self) -> str:
        return f'[firmware]\ntrust_anchor = "{self.anchor}"\ncrl_url = "{self.crl.url("/pki/crl")}"\n'


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Installed]:
    ca = make_ca()
    anchor = tmp_path / "fw-ca.pem"
    ca.write(anchor)
    crl = PackageServer(files={"/pki/crl": ca.crl()}).start()
    installed = Installed(tmp_path / "agent.toml", anchor, ca, crl)
    installed.config.write_text(CURRENT + f'var_dir = "{tmp_path / "var"}"\n' + installed.firmware())
    yield installed
    crl.stop()


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
def test_a_signed_bundle_replaces_the_configuration(tmp_path: Path, agent: Installed, algorithm: str) -> None:
    # given the agent's config naming its trust anchor, and a bundle signed under it
    signer = make_signer(agent.ca, algorithm=algorithm)
    bundle = NEW.encode() + agent.firmware().encode()
    # when it is applied
    code = main(["apply-config", *_files(tmp_path, signer, bundle, signer.sign(bundle)), "--config", str(agent.config)])
    # then the configuration file is the bundle
    assert code == 0
    assert agent.config.read_bytes() == bundle


@pytest.mark.parametrize("forgery", ["tampered", "foreign CA", "expired"])
def test_a_forged_bundle_is_refused_and_the_configuration_kept(tmp_path: Path, agent: Installed, forgery: str) -> None:
    before = agent.config.read_bytes()
    bundle = NEW.encode()
    if forgery == "tampered":
        signer = make_signer(agent.ca)
        signature, bundle = signer.sign(bundle), bundle.replace(b"0.3", b"0.0")
    elif forgery == "foreign CA":
        signer = make_signer(make_ca("Someone else's CA"))
        signature = signer.sign(bundle)
    else:
        signer = make_signer(agent.ca, valid_days=(-30, -1))
        signature = signer.sign(bundle)
    # when it is applied, then it is refused (exit 3) and the file is unchanged
    assert main(["apply-config", *_files(tmp_path, signer, bundle, signature), "--config", str(agent.config)]) == 3
    assert agent.config.read_bytes() == before


def test_a_signed_but_invalid_configuration_is_not_installed(tmp_path: Path, agent: Installed) -> None:
    before = agent.config.read_bytes()
    signer = make_signer(agent.ca)
    bundle = b'station_id = "edge-1"\ncsms_url = "http://not-a-websocket"\n'
    assert (
        main(["apply-config", *_files(tmp_path, signer, bundle, signer.sign(bundle)), "--config", str(agent.config)])
        == 2
    )
    assert agent.config.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_bundle_signed_by_a_revoked_certificate_is_refused_and_the_configuration_kept(
    tmp_path: Path, agent: Installed
) -> None:
    # Given a bundle correctly signed by a certificate its CA has since revoked (listed on the CA's CRL)
    before = agent.config.read_bytes()
    signer = make_signer(agent.ca)
    agent.crl.files["/pki/crl"] = agent.ca.crl(signer.cert)
    bundle = NEW.encode()
    # When it is applied
    code = main(["apply-config", *_files(tmp_path, signer, bundle, signer.sign(bundle)), "--config", str(agent.config)])
    # Then it is refused (exit 3) and the configuration is unchanged
    assert code == 3
    assert agent.config.read_bytes() == before


def test_a_bundle_is_refused_when_no_crl_can_be_had(tmp_path: Path, agent: Installed) -> None:
    # Given a correctly signed bundle, and the CRL location answering 404 (no CRL cached either)
    before = agent.config.read_bytes()
    signer = make_signer(agent.ca)
    del agent.crl.files["/pki/crl"]
    bundle = NEW.encode()
    # When it is applied / Then it is refused: not knowing whether the signer is revoked is not "not revoked"
    code = main(["apply-config", *_files(tmp_path, signer, bundle, signer.sign(bundle)), "--config", str(agent.config)])
    assert code == 3
    assert agent.config.read_bytes() == before
