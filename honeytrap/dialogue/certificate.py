"""The sensor's TLS certificate: generated at the first start, kept under the state directory,
reused on every later start (a sensor keeps one identity, like a real server).

Self-signed, as on the appliances and default installations scanners find on odd ports: an RSA
2048 key (still the most common server key), the sensor's host name as CN and DNS SAN, subject
fields from the shipped list templates/tls.subjects (chosen per sensor), and a validity window
that started some weeks or months ago and lasts one of the usual lifetimes. Made with the
maintained `cryptography` package; no crypto of our own.
"""

from __future__ import annotations

import datetime
import os
import random
from typing import TYPE_CHECKING

from honeytrap.dialogue import sensor
from honeytrap.errors import ConfigError

# `cryptography` is imported only to make a certificate (the first start; a throw-away one where
# state_dir cannot be written): every later start reads the kept files with ssl alone. The
# master's imports are shared by all its processes, and this one is ~2.7 MiB of them.
if TYPE_CHECKING:
    from cryptography import x509

SUBJECTS = "tls.subjects"
KEY_FILE, CERT_FILE = "tls.key", "tls.crt"
KEY_BITS = 2048
# Lifetimes seen on self-signed server certificates: 1, 2, 3, 5 and 10 years (openssl req's
# -days, Debian's ssl-cert snakeoil uses 10 years).
LIFETIMES_DAYS = (365, 730, 1095, 1825, 3650)
# The certificate was made between a week and about a year before the sensor first started,
# and has at least two months left (an expired one would make the sensor look abandoned).
AGE_DAYS = (7, 400)
MIN_LEFT_DAYS = 60
# Subject fields: the NameOID attribute of each.
FIELDS = {"C": "COUNTRY_NAME", "ST": "STATE_OR_PROVINCE_NAME", "L": "LOCALITY_NAME",
          "O": "ORGANIZATION_NAME", "OU": "ORGANIZATIONAL_UNIT_NAME"}
MAX_HOSTNAME = 64  # RFC 5280 ub-common-name


def subject(line: str, hostname: str) -> x509.Name:
    """An openssl-style "/C=../O=.." line from the subjects list, plus CN = the host name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    attrs = []
    for part in line.strip("/").split("/"):
        key, sep, value = part.partition("=")
        if not sep or key not in FIELDS or not value:
            raise ConfigError(f"bad subject field {part!r} (want one of {sorted(FIELDS)})",
                              file=SUBJECTS)
        attrs.append(x509.NameAttribute(getattr(NameOID, FIELDS[key]), value))
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, hostname[:MAX_HOSTNAME]))
    return x509.Name(attrs)


def validity(rng: random.Random) -> tuple[datetime.datetime, datetime.datetime]:
    """A (not before, not after) window around now."""
    now = datetime.datetime.now(datetime.UTC)
    lifetime = rng.choice(LIFETIMES_DAYS)
    age = rng.randint(AGE_DAYS[0], min(AGE_DAYS[1], lifetime - MIN_LEFT_DAYS))
    start = now - datetime.timedelta(days=age, seconds=rng.randint(0, 86399))
    return start, start + datetime.timedelta(days=lifetime)


def generate(hostname: str, rng: random.Random | None = None) -> tuple[bytes, bytes]:
    """A fresh (key PEM, certificate PEM) for `hostname`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rng = rng or random.SystemRandom()
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    name = subject(sensor.pick(SUBJECTS, hostname), hostname)
    start, end = validity(rng)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname[:MAX_HOSTNAME])]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write(path: str, data: bytes) -> None:
    """Write `data` to a new file 0600 (a key must never be readable by others, not even
    briefly), then rename it into place so that a crash leaves no half file."""
    tmp = f"{path}.tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def paths(state_dir: str) -> tuple[str, str]:
    return os.path.join(state_dir, KEY_FILE), os.path.join(state_dir, CERT_FILE)


def ensure(state_dir: str, hostname: str) -> tuple[str, str]:
    """The (key, certificate) file paths under `state_dir`, generated on the first call."""
    key_path, cert_path = paths(state_dir)
    if os.path.exists(key_path) and os.path.exists(cert_path):
        return key_path, cert_path
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        key_pem, cert_pem = generate(hostname)
        _write(key_path, key_pem)
        _write(cert_path, cert_pem)
    except OSError as exc:
        raise ConfigError(f"cannot write the TLS certificate: {exc}", key="state_dir") from exc
    return key_path, cert_path
