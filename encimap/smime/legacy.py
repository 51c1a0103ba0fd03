"""Legacy PKCS#12 (PBE-SHA1-3DES) that gpgsm 2.2 decrypts.

gpgsm 2.2 (minip12.c, `string_to_key`) derives a 3DES key (24 bytes, two rounds of the
RFC 7292 appendix B KDF) wrongly when, in the second round, a 64-byte block I_j + B + 1 has a
zero first byte: libgcrypt prints the number without its leading zeros, left-aligned, so the
block shifts. About one bag in 128 hits it (a random salt and the password decide), and gpgsm
then reports "decryption failed" for the right password. `gpgsm_derives_right` recomputes
that condition for every 3DES bag of a file; `export_pkcs12(legacy=True)` makes a new file
(new salts) until no bag hits it.
"""

from __future__ import annotations

import hashlib

from asn1crypto import pkcs12 as asn1_pkcs12

_V = 64  # SHA-1 block size in bytes (RFC 7292 appendix B.2, v)
_KEY_MATERIAL = 1  # diversifier ID for key material


def gpgsm_derives_right(bundle: bytes, password: bytes) -> bool:
    """Whether gpgsm 2.2 derives the same 3DES key as RFC 7292 for every bag of `bundle`."""
    return all(
        _second_round_blocks_ok(salt, iterations, password)
        for salt, iterations in _pbe_parameters(bundle)
    )


def _pbe_parameters(bundle: bytes) -> list[tuple[bytes, int]]:
    """(salt, iterations) of the encrypted certificate bag and of each shrouded key bag."""
    found = []
    for info in asn1_pkcs12.Pfx.load(bundle).authenticated_safe:
        kind = info["content_type"].native
        if kind == "encrypted_data":
            found.append(info["content"]["encrypted_content_info"]["content_encryption_algorithm"])
        elif kind == "data":
            for bag in asn1_pkcs12.SafeContents.load(info["content"].native):
                if bag["bag_id"].native == "pkcs8_shrouded_key_bag":
                    found.append(bag["bag_value"]["encryption_algorithm"])
    return [(algorithm.kdf_salt, algorithm.kdf_iterations) for algorithm in found]


def _second_round_blocks_ok(salt: bytes, iterations: int, password: bytes) -> bool:
    bmp = password.decode("utf-8").encode("utf-16-be") + b"\0\0"
    salt_block = bytes(salt[i % len(salt)] for i in range(_V))
    password_block = bytes(bmp[i % len(bmp)] for i in range(_V))
    digest = hashlib.sha1(  # noqa: S324 - the KDF of the PKCS#12 format gpgsm reads
        bytes([_KEY_MATERIAL]) * _V + salt_block + password_block
    ).digest()
    for _ in range(iterations - 1):
        digest = hashlib.sha1(digest).digest()  # noqa: S324
    b_plus_one = int.from_bytes((digest * 4)[:_V], "big") + 1
    return all(
        (int.from_bytes(block, "big") + b_plus_one) % (1 << (8 * _V)) >> (8 * (_V - 1))
        for block in (salt_block, password_block)
    )
