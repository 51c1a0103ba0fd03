"""The one decision engine for every login on the host (SMTP submission, IMAP, auth socket)."""

from encimap.auth.engine import AuthEngine, engine_for
from encimap.auth.principal import AuthFailed, AuthUnavailable, Principal

__all__ = ["AuthEngine", "AuthFailed", "AuthUnavailable", "Principal", "engine_for"]
