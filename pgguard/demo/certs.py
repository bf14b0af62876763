"""Throwaway X.509 certificates for the demo and the tests.

`pgguard demo` must serve TLS without asking anyone for a certificate, and the
tests need one CA that both PostgreSQL's and the gateway's certificates chain
to, so clients can run with `sslmode=verify-full`. EC P-256 keys keep
generation instant.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_HOSTNAMES = ("localhost", "127.0.0.1", "::1")
VALID_DAYS = 365
# Backdated so that a client whose clock lags a little still accepts the cert.
BACKDATE = datetime.timedelta(days=3)


@dataclass(frozen=True)
class PemFiles:
    """Where a certificate and its key were written."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class CertifiedKey:
    """A private key and the certificate that vouches for it."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, directory: str | os.PathLike[str], stem: str) -> PemFiles:
        """Write `STEM.crt` and `STEM.key`; the key is created 0600, never briefly readable by others."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        files = PemFiles(directory / f"{stem}.crt", directory / f"{stem}.key")
        files.cert.write_bytes(self.cert_pem)
        fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with open(fd, "wb") as out:
            out.write(self.key_pem)
        os.chmod(files.key, 0o600)  # O_CREAT's mode does not apply to an existing file
        return files


# A CA is just a certified key whose certificate may sign others.
CA = CertifiedKey


def make_ca(common_name: str, *, days: int = VALID_DAYS) -> CA:
    """A self-signed root that may sign leaf certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        _builder(name, name, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CA(key, cert)


def issue_server_cert(
    ca: CA,
    hostnames: Sequence[str] = DEFAULT_HOSTNAMES,
    *,
    days: int = VALID_DAYS,
) -> CertifiedKey:
    """A TLS server certificate for `hostnames` (IP literals become IP SANs, as verify-full needs)."""
    if not hostnames:
        raise ValueError("a server certificate needs at least one hostname")
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostnames[0])])
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        _builder(subject, ca.cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hostnames]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca.key, hashes.SHA256())
    )
    return CertifiedKey(key, cert)


def _builder(
    subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    """Signing only: ECDSA handshakes need digital_signature; a CA also signs certs and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _san(hostname: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(hostname))
    except ValueError:
        return x509.DNSName(hostname)
