"""Credentials: generating, storing and checking bearer secrets (write keys, read tokens).

A credential is a random string shown to its owner once, when it is created; only its
digest is stored. Checking a presented secret hashes it and compares digests in constant
time (:func:`hmac.compare_digest`).

Why a plain SHA-256 and not a password hash (bcrypt, scrypt, Argon2): those are slow on
purpose because a human password has little entropy and a stolen hash can be brute-forced.
A generated key carries :data:`GENERATED_BYTES` × 8 = 192 random bits; no amount of
guessing per second reaches that, so slowness buys nothing and would cost tens of
milliseconds of CPU on every request. It is what GitHub does for its tokens and what
OWASP's guidance allows for high-entropy API keys. Because the digest is unsalted and
deterministic, it also serves as the lookup key (digest → owner) — a salted hash would
require trying every stored salt per request. Supplied keys (an operator's own, e.g. one
already deployed in the SDKs) must be at least :data:`MIN_SECRET_CHARS` characters; a
weak one of that length is the operator's choice, and stays out of plain text at rest.

Prefixes (``hw_wk_`` write key, ``hw_rt_`` read token) say what a leaked string is, so
secret scanners and people can recognise it. The fingerprint (:func:`fingerprint`, the
first 12 hex digits of the digest) names a credential in listings without revealing it;
``printf %s "$KEY" | sha256sum | cut -c1-12`` gives the same value from the key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from headwater.errors import InvalidInputError

WRITE_KEY_PREFIX = "hw_wk_"
READ_TOKEN_PREFIX = "hw_rt_"
GENERATED_BYTES = 24  # 192 bits of entropy; token_urlsafe encodes them as 32 characters
MIN_SECRET_CHARS = 16  # a supplied secret shorter than this is refused
DIGEST_SCHEME = "sha256:"
FINGERPRINT_CHARS = 12


def generate(prefix: str) -> str:
    """A new secret: ``prefix`` + 32 URL-safe characters (:data:`GENERATED_BYTES` random bytes
    from :mod:`secrets`, the OS CSPRNG)."""
    return prefix + secrets.token_urlsafe(GENERATED_BYTES)


def check_strength(secret: str, field: str) -> str:
    """``secret`` unchanged if it is at least :data:`MIN_SECRET_CHARS` characters of printable
    ASCII without whitespace, else :class:`~headwater.errors.InvalidInputError` naming ``field``
    and the rule (never the secret)."""
    if len(secret) < MIN_SECRET_CHARS:
        raise InvalidInputError(
            f"{field}: too short ({len(secret)} characters); a key must have at least {MIN_SECRET_CHARS} "
            f"(leave it out to have one generated)", field=field)
    if not (secret.isascii() and secret.isprintable()) or any(c.isspace() for c in secret):
        raise InvalidInputError(f"{field}: must be printable ASCII without spaces", field=field)
    return secret


def digest(secret: str) -> str:
    """The stored form of ``secret``: ``"sha256:"`` + the hex SHA-256 of its UTF-8 bytes."""
    return DIGEST_SCHEME + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def verify(secret: str, stored: str) -> bool:
    """Whether ``secret`` is the one whose digest is ``stored``, compared in constant time."""
    return hmac.compare_digest(digest(secret).encode(), stored.encode())


def is_digest(value: str) -> bool:
    """Whether ``value`` is a digest made by :func:`digest` (not a plain secret)."""
    hexpart = value[len(DIGEST_SCHEME):]
    return value.startswith(DIGEST_SCHEME) and len(hexpart) == 64 and all(c in "0123456789abcdef" for c in hexpart)


def fingerprint(stored: str) -> str:
    """A short public name of the credential whose digest is ``stored`` (12 hex digits)."""
    return stored[len(DIGEST_SCHEME):len(DIGEST_SCHEME) + FINGERPRINT_CHARS]
