"""Errors of the OpenPGP engine; the message of each is a reason fit for an operator or a log."""


class OpenPGPError(Exception):
    """Base of every error the OpenPGP engine raises."""


class KeyRefused(OpenPGPError):
    """An OpenPGP key cannot be used to encrypt mail to an address; str() says why."""


class NoUsableKey(OpenPGPError):
    """There is no OpenPGP key to encrypt to, so the message cannot be stored."""


def reason(exc: BaseException) -> str:
    """The first line of an error from the binding (it appends a Rust backtrace)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
