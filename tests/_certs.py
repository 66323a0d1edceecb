"""TLS certificates made at test time with the `cryptography` package.

A CA, a server certificate for 127.0.0.1 / localhost (IP and DNS subject alternative
names), client certificates the CA signed (subject CN and a DNS SAN = the client's
name), and one client certificate from a CA the server does not trust. EC P-256 keys:
quick to make. The Node tests run it as a script: `python tests/_certs.py DIR` writes
the files and prints their paths as JSON.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_NAMES = ("worker-1", "ops", "nobody")


@dataclass(frozen=True)
class CertFiles:
    """Paths of the PEM files (str, ready for flags and environment variables)."""

    ca: str
    server_cert: str
    server_key: str
    # client name -> (certificate, key); "stranger" is signed by an untrusted CA.
    clients: dict[str, tuple[str, str]]

    def client(self, name: str) -> tuple[str, str]:
        return self.clients[name]


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _Authority:
    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )

    def issue(
        self, common_name: str, sans: list[x509.GeneralName], usage: x509.ObjectIdentifier
    ) -> tuple[bytes, bytes]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def make_certificates(directory: Path) -> CertFiles:
    """Write a CA, a 127.0.0.1/localhost server pair and client pairs into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = _Authority("runcontrol test CA")
    server_cert, server_key = ca.issue(
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        ExtendedKeyUsageOID.SERVER_AUTH,
    )
    clients: dict[str, tuple[str, str]] = {}
    issuers = [(name, ca) for name in CLIENT_NAMES] + [("stranger", _Authority("other CA"))]
    for name, issuer in issuers:
        cert, key = issuer.issue(name, [x509.DNSName(name)], ExtendedKeyUsageOID.CLIENT_AUTH)
        clients[name] = (
            _write(directory / f"client-{name}.pem", cert),
            _write(directory / f"client-{name}-key.pem", key),
        )
    return CertFiles(
        ca=_write(directory / "ca.pem", ca.cert.public_bytes(serialization.Encoding.PEM)),
        server_cert=_write(directory / "server.pem", server_cert),
        server_key=_write(directory / "server-key.pem", server_key),
        clients=clients,
    )


if __name__ == "__main__":
    print(json.dumps(asdict(make_certificates(Path(sys.argv[1])))))
