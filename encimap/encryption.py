"""One way to encrypt a message for a vaultbox, whichever kind of key it has.

A vaultbox may hold X.509 certificates (S/MIME), OpenPGP keys (PGP/MIME) or both. Its copy of
a message is encrypted with one kind only: the one its key preference names, or the other when
the preferred kind has no usable key. Both formats apply the same RFC 9788 header protection
(`encimap.mime.protect`) and store already encrypted mail as it is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pysequoia
from cryptography import x509

from encimap import openpgp, smime
from encimap.config import SMIMEConfig
from encimap.mime import EncryptionResult

# What encrypting can raise for a message or a key; delivery turns these into 451 4.3.0.
ENCRYPTION_ERRORS = (smime.SMIMEError, openpgp.OpenPGPError, ValueError)


@dataclass(frozen=True)
class Keys:
    """The usable keys of one kind that a vaultbox's copy is encrypted to."""

    certificates: tuple[x509.Certificate, ...] = ()
    openpgp_keys: tuple[pysequoia.Cert, ...] = ()
    profile: str = smime.Profile.AES256_CBC.value
    hide_subject: bool = True

    def __bool__(self) -> bool:
        return bool(self.certificates or self.openpgp_keys)


def choose(
    certificates: Sequence[x509.Certificate],
    openpgp_keys: Sequence[pysequoia.Cert],
    preference: str,
    limits: Mapping[str, Any],
    config: SMIMEConfig,
) -> Keys:
    """The usable keys of the preferred kind, or of the other kind if there are none, with the
    vaultbox's settings (`limits` keys `smime_profile` and `hide_subject` over `config`)."""
    profile = str(limits.get("smime_profile") or config.default_profile)
    hide_subject = bool(limits.get("hide_subject", config.hide_subject))
    use_openpgp = bool(openpgp_keys) and (preference == "openpgp" or not certificates)
    if use_openpgp:
        return Keys(openpgp_keys=tuple(openpgp_keys), profile=profile, hide_subject=hide_subject)
    return Keys(certificates=tuple(certificates), profile=profile, hide_subject=hide_subject)


def encrypt(raw: bytes, keys: Keys) -> EncryptionResult:
    """`raw` encrypted to `keys` (S/MIME or PGP/MIME), or unchanged if already encrypted.

    Raises one of ENCRYPTION_ERRORS (NoUsableCertificate when `keys` is empty). CPU-bound:
    run large messages in a worker thread.
    """
    if keys.openpgp_keys:
        return openpgp.encrypt_message(raw, keys.openpgp_keys, hide_subject=keys.hide_subject)
    return smime.encrypt_message(
        raw, keys.certificates, keys.profile, hide_subject=keys.hide_subject
    )
