"""HTTPS on the LAN: self-signed certificate pinned by fingerprint, or the institute's certificate."""

from __future__ import annotations

import datetime
import hashlib
import os
import stat

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.events import make_events, mobile_request


async def _post_tls(url: str, fingerprint: bytes) -> int:
    async with aiohttp.ClientSession() as http:
        body, headers = mobile_request(make_events(3))
        async with http.post(
            url + "/api/data/v1/telemetry", data=body, headers=headers, ssl=aiohttp.Fingerprint(fingerprint)
        ) as r:
            return r.status


async def test_self_signed_certificate_is_generated_and_pinnable(start_hub):
    hub = await start_hub(tls={"enabled": True, "port": 0})
    h = hub.hub
    assert h.tls is not None and h.tls.self_signed and len(h.tls.fingerprint) == 64
    key = h.data_dir / "tls" / "key.pem"
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600  # readable by the service only
    url = f"https://127.0.0.1:{h.tls_port}"
    assert await _post_tls(url, bytes.fromhex(h.tls.fingerprint)) == 200
    with pytest.raises(aiohttp.ServerFingerprintMismatch):
        await _post_tls(url, hashlib.sha256(b"someone else").digest())
    assert hub.rows("SELECT count(*) FROM events") == [(3,)]
    # The same certificate is kept across restarts (clients pinned it).
    fp = h.tls.fingerprint
    await h.stop()
    again = await start_hub(tls={"enabled": True, "port": 0})
    assert again.hub.tls.fingerprint == fp


async def test_configured_certificate_is_used_as_is(start_hub, tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hub.school.example")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    hub = await start_hub(
        tls={"enabled": True, "port": 0, "cert_file": str(tmp_path / "c.pem"), "key_file": str(tmp_path / "k.pem")}
    )
    want = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    assert hub.hub.tls.fingerprint == want and not hub.hub.tls.self_signed
    assert await _post_tls(f"https://127.0.0.1:{hub.hub.tls_port}", bytes.fromhex(want)) == 200
    assert not (hub.hub.data_dir / "tls").exists()


async def test_half_configured_certificate_is_refused(start_hub):
    from hub.errors import ConfigError

    with pytest.raises(ConfigError, match=r"tls\.cert_file and tls\.key_file go together"):
        await start_hub(tls={"enabled": True, "port": 0, "cert_file": "/nonexistent.pem"})
