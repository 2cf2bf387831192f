"""HTTPS on the LAN: a configured certificate, or a self-signed one whose fingerprint clients pin."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import logging
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .config import TlsConfig
from .errors import ConfigError
from .secrets import write_private

__all__ = ["TlsMaterial", "certificate_path", "fingerprint_of", "grouped", "load_or_create", "local_fingerprint"]

log = logging.getLogger(__name__)

# A self-signed certificate lives this long; clients pin its fingerprint, not its dates.
_SELF_SIGNED_DAYS = 3650


@dataclass(frozen=True)
class TlsMaterial:
    """A server SSL context and the SHA-256 fingerprint of its certificate (hex, lower case)."""

    context: ssl.SSLContext
    fingerprint: str
    cert_path: Path
    self_signed: bool


def fingerprint_of(cert_pem: bytes) -> str:
    """SHA-256 over the certificate's DER bytes: what a client compares when it pins."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(serialization.Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def grouped(fingerprint: str) -> str:
    """A fingerprint as browsers show it (AB:CD:...), for comparing by eye."""
    return ":".join(fingerprint[i : i + 2] for i in range(0, len(fingerprint), 2)).upper()


def certificate_path(cfg: TlsConfig, data_dir: Path) -> Path:
    """Where the hub's certificate is: tls.cert_file, else the self-signed one in the data directory."""
    return Path(cfg.cert_file) if cfg.cert_file else data_dir / "tls" / "cert.pem"


def local_fingerprint(cfg: TlsConfig, data_dir: Path) -> str:
    """The SHA-256 fingerprint of the certificate the hub on this machine uses (read from its file, so it
    does not depend on anything the LAN says); ConfigError in words when it cannot be read."""
    path = certificate_path(cfg, data_dir)
    try:
        return fingerprint_of(path.read_bytes())
    except FileNotFoundError:
        raise ConfigError(
            f"no certificate at {path} yet: the hub makes it on its first start with tls.enabled = true"
        ) from None
    except PermissionError:
        raise ConfigError(
            f"cannot read the hub's certificate {path}: run this as the hub's user or with sudo"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the hub's certificate {path}: {exc}") from None


def _self_signed(cert_path: Path, key_path: Path, name: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    host = socket.gethostname()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64] or host[:64] or "telemetry-hub")])
    alt: list[x509.GeneralName] = [
        x509.DNSName(host),
        x509.DNSName(f"{host}.local"),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=_SELF_SIGNED_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    write_private(
        key_path,
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
    )
    write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM))


def load_or_create(cfg: TlsConfig, data_dir: Path, name: str) -> TlsMaterial:
    """The configured certificate as is, or the hub's self-signed one (generated on first start)."""
    if cfg.cert_file or cfg.key_file:
        if not (cfg.cert_file and cfg.key_file):
            raise ConfigError("tls.cert_file and tls.key_file go together: set both, or neither for self-signed")
        cert_path, key_path, self_signed = Path(cfg.cert_file), Path(cfg.key_file), False
    else:
        folder = data_dir / "tls"
        folder.mkdir(mode=0o700, exist_ok=True)
        cert_path, key_path, self_signed = folder / "cert.pem", folder / "key.pem", True
        if not (cert_path.exists() and key_path.exists()):
            _self_signed(cert_path, key_path, name)
            log.info("generated a self-signed TLS certificate in %s", folder)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert_path, key_path)
        fingerprint = fingerprint_of(cert_path.read_bytes())
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(f"tls: cannot use certificate {cert_path} with key {key_path}: {exc}") from None
    return TlsMaterial(ctx, fingerprint, cert_path, self_signed)
