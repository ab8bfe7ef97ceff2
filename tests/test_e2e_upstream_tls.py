"""TLS to providers on a private CA: `upstream.ca` trusts it, `verify: false` skips verification,
and without either the call fails cleanly (-1003) instead of reaching an unverified host."""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from addons.rules.loader import load_sources
from tests.harness import Gateway, write_rules


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer_key: ec.EllipticCurvePrivateKey,
          issuer: x509.Name | None, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(issuer or name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if ca:
        builder = builder.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                                        critical=True)
    else:
        loopback = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([loopback]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def private_provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    tmp = tmp_path_factory.mktemp("private-ca")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("Private Test CA", ca_key, ca_key, None, ca=True)
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("127.0.0.1", leaf_key, ca_key, ca.subject, ca=False)
    (tmp / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (tmp / "leaf.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = json.dumps({"private": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp / "leaf.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1], tmp / "ca.pem"
    server.shutdown()
    server.server_close()


def test_private_ca_trusted_by_upstream_ca_refused_without(tmp_path: Path, confdir: Path,
                                                           private_provider: tuple[int, Path]) -> None:
    port, ca_file = private_provider
    (tmp_path / "rules" / "keys").mkdir(parents=True)  # file: reads only under the rules directory
    (tmp_path / "rules" / "keys" / "ca.pem").write_text(ca_file.read_text())
    service = """
        service: {name}
        hosts: [{name}.test]
        upstream: {{url: "https://127.0.0.1:{port}", timeout: 2s{extra}}}
    """
    rules = write_rules(tmp_path / "rules", {
        "with_ca.yaml": service.format(name="withca", port=port, extra=', ca: "file:keys/ca.pem"'),
        "no_ca.yaml": service.format(name="noca", port=port, extra=""),
        "insecure.yaml": service.format(name="insecure", port=port, extra=", verify: false"),
        "gateway.yaml": "gateway: {require_app: false}\n",
    })
    with Gateway(rules, confdir) as gw:
        def get(host: str) -> requests.Response:
            return requests.get(f"http://{host}/x", proxies=gw.proxies(), timeout=15)

        assert get("withca.test").json()["data"] == {"private": True}
        refused = get("noca.test")
        assert (refused.status_code, refused.json()["code"]) == (503, -1003)
        assert "certificate" in gw.log_for(refused.headers["X-Request-ID"])["error"].lower()
        assert get("insecure.test").json()["code"] == 0
        assert "verification of insecure's upstream is OFF" in gw.output()


def test_a_bad_ca_is_a_rule_error(tmp_path: Path) -> None:
    _, problems = load_sources([("s.yaml", "service: s\nupstream: {url: 'https://s.test', ca: 'not a pem'}\n")],
                               tmp_path, env={})
    assert problems and "upstream.ca: ca is not a usable PEM certificate bundle" in str(problems[0])
