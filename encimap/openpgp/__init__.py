"""OpenPGP engine: encrypt inbound mail to a vaultbox's OpenPGP keys as PGP/MIME, check keys.

A pure library over pysequoia (the Sequoia-PGP binding, a native core); no gpg process. The
server never holds secret keys, so there is no decryption here; tests decrypt with gpg, sq
and rnp.
"""

from encimap.openpgp.encrypt import encrypt_message
from encimap.openpgp.errors import KeyRefused, NoUsableKey, OpenPGPError
from encimap.openpgp.keys import KeyInfo, check_key, load_key, usable, usable_keys

__all__ = [
    "KeyInfo",
    "KeyRefused",
    "NoUsableKey",
    "OpenPGPError",
    "check_key",
    "encrypt_message",
    "load_key",
    "usable",
    "usable_keys",
]
