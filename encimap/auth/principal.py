"""What a login decision returns: a principal, or one of two refusals."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

PrincipalKind = Literal["motorblock", "vaultbox_smtp", "vaultbox_imap"]


class AuthFailed(Exception):
    """Generic refusal (SMTP 535 5.7.8, IMAP NO [AUTHENTICATIONFAILED]).

    The message never says what was wrong: not which database, not whether the user exists.
    """

    def __init__(self, message: str = "authentication failed") -> None:
        super().__init__(message)


class AuthUnavailable(Exception):
    """Temporary refusal: a database is down, the bcrypt queue is full, or the client's
    address hit the hard failure limit (SMTP 454 4.7.0, IMAP NO [UNAVAILABLE])."""

    def __init__(self, message: str = "authentication temporarily unavailable") -> None:
        super().__init__(message)


@dataclass(frozen=True)
class Principal:
    kind: PrincipalKind
    username: str
    credential_id: uuid.UUID  # motor_blocks.id or the credential row id
    user_id: uuid.UUID
    vaultbox_id: uuid.UUID | None
    motorblock_id: uuid.UUID | None
    sender_domains: tuple[str, ...]  # MotorBlock: its domain (any address in it)
    sender_addresses: tuple[str, ...]  # vaultbox: its alias@domain
    hourly_limit: int

    def may_send_as(self, address: str) -> bool:
        """Whether MAIL FROM `address` belongs to this principal (case-insensitive)."""
        address = address.strip().lower()
        if address in self.sender_addresses:
            return True
        local, at, domain = address.rpartition("@")
        return bool(at and local) and domain in self.sender_domains
