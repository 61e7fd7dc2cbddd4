"""Secrets as the service holds them: API tokens and session ids only as HMAC-SHA256 digests under the
server's auth secret (they are 256-bit random, so a keyed hash is enough and costs microseconds per
request), passwords as scrypt hashes (people choose them, so a slow, memory-hard KDF)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

TOKEN_PREFIX = "ksk_"
"""Every kiseki API token starts with this, so a leaked one is recognisable (and secret scanners can
match it); the rest is 32 random bytes, base64url."""

_SCRYPT_N, _SCRYPT_R, _SCRYPT_P = 2**14, 8, 1
_SCRYPT_BYTES = 32
MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024


class SecretMismatch(Exception):
    """The configured auth secret is not the one this database's tokens and sessions are stored under."""


def secret_fingerprint(secret: bytes) -> bytes:
    """What the database keeps of a configured auth secret: enough to recognise it, useless otherwise."""
    return hmac.new(secret, b"kiseki auth secret fingerprint", hashlib.sha256).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def looks_like_token(text: str) -> bool:
    return text.startswith(TOKEN_PREFIX) and 40 <= len(text) <= 64


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_csrf_token() -> str:
    return secrets.token_urlsafe(24)


def digest(secret_key: bytes, kind: str, value: str) -> bytes:
    """The stored form of a token or session id. `kind` separates the two: a session id is never a token."""
    return hmac.new(secret_key, f"{kind}:{value}".encode(), hashlib.sha256).digest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    derived = _scrypt(password, salt, _SCRYPT_N, _SCRYPT_R, _SCRYPT_P)
    return "$".join(["scrypt", str(_SCRYPT_N), str(_SCRYPT_R), str(_SCRYPT_P), _b64(salt), _b64(derived)])


def verify_password(password: str, stored: str) -> bool:
    """Constant-time check of `password` against a `hash_password` result; False for any other text."""
    try:
        scheme, n, r, p, salt, expected = stored.split("$")
        if scheme != "scrypt":
            return False
        derived = _scrypt(password, _unb64(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(derived, _unb64(expected))


def check_password_rules(password: str) -> str | None:
    """Why `password` cannot be used, or None."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    if looks_like_token(password):
        return "must not look like an API token"
    return None


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=128 * r * n * 2, dklen=_SCRYPT_BYTES
    )


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
