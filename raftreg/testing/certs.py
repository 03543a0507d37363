"""Throwaway certificates for tests and for trying TLS locally (NOT for production).

`make_certs(directory)` writes a fresh self-signed CA and, signed by it, a server certificate
for the given hosts (default 127.0.0.1, ::1 and localhost) and a client certificate, all PEM:

    ca.pem  ca-key.pem  server.pem  server-key.pem  client.pem  client-key.pem

The server certificate allows both serverAuth and clientAuth, so a node can also present it as
its client certificate when it calls the client API of itself or of the leader with mutual TLS
on (see `raftreg.api.auth.security`). Keys are EC P-256, written with mode 0600 and no passphrase.

From a shell:  python -m raftreg.testing.certs DIR [HOST ...]
then, in cluster.toml:

    [cluster]
    tls_cert_file = "DIR/server.pem"
    tls_key_file = "DIR/server-key.pem"
    tls_ca_file = "DIR/ca.pem"            # nodes verify each other's server certificate
    tls_client_ca_file = "DIR/ca.pem"     # optional: require client certificates (mutual TLS)

and `raftreg --cacert DIR/ca.pem [--cert DIR/client.pem --key DIR/client-key.pem] ...`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True, slots=True)
class CertFiles:
    """Paths of the PEM files `make_certs` wrote."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "raftreg test PKI"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _san(hosts: Sequence[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def make_certs(
    directory: str | Path,
    *,
    hosts: Sequence[str] = DEFAULT_HOSTS,
    client_name: str = "raftreg-client",
    days: int = 30,
) -> CertFiles:
    """Write a new CA, a server certificate for `hosts` and a client certificate (CN
    `client_name`) into `directory` (created if needed); return their paths."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("raftreg test CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        cn: str, usages: list[x509.ObjectIdentifier], san: Sequence[str]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        b = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(until)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if san:
            b = b.add_extension(_san(san), critical=False)
        return b.sign(ca_key, hashes.SHA256()), key

    server, server_key = leaf(
        "raftreg server",
        [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
        hosts,
    )
    client, client_key = leaf(client_name, [ExtendedKeyUsageOID.CLIENT_AUTH], ())

    files = CertFiles(
        ca=d / "ca.pem",
        ca_key=d / "ca-key.pem",
        server_cert=d / "server.pem",
        server_key=d / "server-key.pem",
        client_cert=d / "client.pem",
        client_key=d / "client-key.pem",
    )
    _write_cert(files.ca, ca)
    _write_key(files.ca_key, ca_key)
    _write_cert(files.server_cert, server)
    _write_key(files.server_key, server_key)
    _write_cert(files.client_cert, client)
    _write_key(files.client_key, client_key)
    return files


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stderr.write("usage: python -m raftreg.testing.certs DIR [HOST ...]\n")
        return 2
    files = make_certs(args[0], hosts=tuple(args[1:]) or DEFAULT_HOSTS)
    for path in (files.ca, files.server_cert, files.server_key, files.client_cert,
                 files.client_key):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
