"""Password generation and hashing (bcrypt). Verification lives in the engine's thread pool."""

from __future__ import annotations

import secrets

import bcrypt

GENERATED_PASSWORD_BYTES = 18  # 24 URL-safe characters, 144 bits
# bcrypt uses only the first 72 bytes of a password; longer ones are refused, not truncated.
MAX_PASSWORD_BYTES = 72


class PasswordError(ValueError):
    pass


def generate_password() -> str:
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)


def hash_password(password: str, cost: int) -> str:
    encoded = password.encode()
    if not encoded:
        raise PasswordError("the password is empty")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise PasswordError(f"the password is longer than {MAX_PASSWORD_BYTES} bytes")
    return bcrypt.hashpw(encoded, bcrypt.gensalt(rounds=cost)).decode()
