"""OpenPGP public keys of a vaultbox: parse, check, describe.

A transferable public key (RFC 4880 section 11.1, ASCII-armoured or binary, at most
MAX_KEY_BYTES) is accepted for an address when it is not revoked or expired, has an
encryption-capable subkey that is valid now (Sequoia's standard policy decides, signatures
checked; a subkey past its own expiry is not used), carries a user ID that is not revoked with
the address (unless mismatches are allowed), uses no weak algorithm (RSA under 2048 bits, DSA
or ElGamal anywhere in the key) and, as a version 4 key, is not sent the RFC 9580 format
(SEIPD version 2) without asking for it: Sequoia writes it to a key without a Features
subpacket, GnuPG 2.2 and 2.4, RNP before 0.18 and so Thunderbird cannot read it, and the
binding offers no way to choose.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pysequoia
from pysequoia.packet import HashAlgorithm, PacketPile, PublicKeyAlgorithm, SignatureType, Tag

from encimap.openpgp.errors import KeyRefused, NoUsableKey, reason

MIN_RSA_BITS = 2048
# A flooded key (thousands of user IDs or certifications) costs about 0.5 ms per user ID to
# check, on the intake's loop at the first RCPT; ordinary keys are a few KB with a few user IDs.
MAX_KEY_BYTES = 512 * 1024
MAX_USER_IDS = 100
# Curves GnuPG and RNP make keys on that the binding's crypto backend cannot use.
UNSUPPORTED_CURVES = frozenset({"brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1"})
# Every valid encryption subkey gets a copy of the session key: one public-key operation and
# up to ~600 bytes per subkey in every message; keys in use have one or two.
MAX_ENCRYPTION_SUBKEYS = 8
FEATURE_SEIPD_V2 = 0x08  # RFC 9580 section 5.2.3.32
_FEATURES_SUBPACKET = 30
# By the algorithm's number (the binding's enum values are not hashable).
_RSA = {
    int(PublicKeyAlgorithm.RSAEncryptSign),
    int(PublicKeyAlgorithm.RSAEncrypt),
    int(PublicKeyAlgorithm.RSASign),
}
_WEAK = {
    int(PublicKeyAlgorithm.DSA): "DSA",
    int(PublicKeyAlgorithm.ElGamalEncrypt): "ElGamal",
    int(PublicKeyAlgorithm.ElGamalEncryptSign): "ElGamal",
}
_ECC = {int(PublicKeyAlgorithm.ECDH), int(PublicKeyAlgorithm.ECDSA), int(PublicKeyAlgorithm.EdDSA)}
# Curve OIDs (RFC 9580 section 9.2) as they appear in key packets, by short name.
_CURVES = {
    bytes.fromhex("2b060104019755010501"): "cv25519",
    bytes.fromhex("2b06010401da470f01"): "ed25519",
    bytes.fromhex("2a8648ce3d030107"): "nistp256",
    bytes.fromhex("2b81040022"): "nistp384",
    bytes.fromhex("2b81040023"): "nistp521",
    bytes.fromhex("2b2403030208010107"): "brainpoolP256r1",
    bytes.fromhex("2b240303020801010b"): "brainpoolP384r1",
    bytes.fromhex("2b240303020801010d"): "brainpoolP512r1",
}
_KEY_TAGS = (Tag.PublicKey, Tag.PublicSubkey)
_SECRET_TAGS = (Tag.SecretKey, Tag.SecretSubkey)
_WEAK_HASHES = {int(HashAlgorithm.SHA1): "SHA-1", int(HashAlgorithm.MD5): "MD5",
                int(HashAlgorithm.RipeMD): "RIPEMD-160"}  # fmt: skip
_RENEW_SHA1 = (
    "renew its self-signatures with current software (GnuPG: gpg --quick-set-expire FINGERPRINT "
    "2y, then gpg --quick-set-expire FINGERPRINT 2y '*') and import it again"
)
_RENEW_FEATURES = (
    "renew its preferences with current software (GnuPG: gpg --edit-key FINGERPRINT setpref "
    "save) and import it again"
)


@dataclass(frozen=True)
class KeyInfo:
    """What an accepted key is, for the store, the CLI and the processing log."""

    fingerprint: str  # primary key, upper-case hex as GnuPG prints it
    user_ids: tuple[str, ...]
    algorithm: str  # primary key, e.g. "ed25519" or "rsa3072"
    encryption_algorithms: tuple[str, ...]  # of the subkeys mail is encrypted to, e.g. "cv25519"
    created: datetime
    expires: datetime | None


def load_key(data: bytes | str) -> pysequoia.Cert:
    """Exactly one public key from armoured or binary `data`; KeyRefused otherwise."""
    raw = data.encode("ascii", "replace") if isinstance(data, str) else data
    if len(raw) > MAX_KEY_BYTES:
        raise KeyRefused(
            f"the key is {len(raw) // 1024} KiB, more than {MAX_KEY_BYTES // 1024} KiB "
            "(export it without third-party signatures: gpg --export-options export-minimal)"
        )
    try:
        certs = pysequoia.Cert.split_bytes(raw)
    except Exception as exc:  # the binding raises plain exceptions with a Rust backtrace
        raise KeyRefused(f"not an OpenPGP key: {reason(exc)}") from None
    if len(certs) != 1:
        raise KeyRefused(f"expected one OpenPGP key, found {len(certs)}")
    cert = certs[0]
    if any(packet.tag in _SECRET_TAGS for packet in PacketPile.from_bytes(raw)):
        raise KeyRefused("contains secret key material: give the public key only (gpg --export)")
    return cert


def check_key(
    data: bytes | str | pysequoia.Cert,
    address: str,
    *,
    allow_address_mismatch: bool = False,
    now: datetime | None = None,
) -> tuple[pysequoia.Cert, KeyInfo]:
    """Check that mail to `address` may be encrypted to this key; KeyRefused says why not."""
    cert = data if isinstance(data, pysequoia.Cert) else load_key(data)
    now = now or datetime.now(UTC)
    keys = key_packets(cert)
    for packet in keys:
        _check_strength(packet)
    components = _components(cert)
    count = sum(component.packet.tag == Tag.UserID for component in components)  # type: ignore[attr-defined]
    if count > MAX_USER_IDS:
        raise KeyRefused(f"the key has {count} user IDs, at most {MAX_USER_IDS} are accepted")
    try:
        revoked, expires = cert.is_revoked, cert.expiration
    except Exception as exc:  # Sequoia's policy refuses the primary key or its binding
        raise KeyRefused(_explained(f"the key is refused: {reason(exc)}", components)) from None
    if revoked:
        raise KeyRefused("the key is revoked")
    if expires is not None and expires <= now:
        raise KeyRefused(f"the key expired on {expires:%Y-%m-%d %H:%M} UTC")
    user_ids = tuple(str(user_id) for user_id in cert.user_ids)
    revoked_ids = _revoked_user_ids(components)
    if not allow_address_mismatch and address.lower() not in {
        found.lower()
        for user_id in user_ids
        if user_id not in revoked_ids and (found := user_id_address(user_id))
    }:
        shown = ", ".join(f"{i} (revoked)" if i in revoked_ids else i for i in user_ids) or "none"
        raise KeyRefused(f"no user ID with the address {address} (user IDs: {shown})")
    try:
        pkesks = _trial_pkesks(cert, now, components)
    except NoUsableKey as exc:
        raise KeyRefused(_explained(str(exc), components)) from None
    used = [_pkesk_key_id(body) for body in pkesks]
    if len(used) > MAX_ENCRYPTION_SUBKEYS:
        raise KeyRefused(
            f"the key has {len(used)} valid encryption subkeys, at most "
            f"{MAX_ENCRYPTION_SUBKEYS} are accepted (each costs every message a copy of its key)"
        )
    announced = _features(components) or 0
    if (
        keys[0].body[:1] == b"\x04"
        and not announced & FEATURE_SEIPD_V2
        and any(body[:1] == b"\x06" for body in pkesks)  # what Sequoia writes: PKESK v6, SEIPD v2
    ):
        raise KeyRefused(
            "the key does not announce its features (no Features subpacket on its primary user "
            "ID, as RNP 0.16 makes keys), so mail to it would be in the RFC 9580 format that "
            f"GnuPG, RNP and Thunderbird cannot read; {_RENEW_FEATURES}"
        )
    algorithms = {packet.key_id: key_algorithm(packet) for packet in keys}
    return cert, KeyInfo(
        fingerprint=cert.fingerprint.upper(),
        user_ids=user_ids,
        algorithm=key_algorithm(keys[0]),
        encryption_algorithms=tuple(algorithms.get(key_id, "unknown") for key_id in used),
        created=keys[0].key_created or now,
        expires=expires,
    )


def usable_keys(
    keys: Iterable[bytes | str],
    address: str,
    *,
    allow_address_mismatch: bool = False,
    now: datetime | None = None,
) -> list[pysequoia.Cert]:
    """Those of `keys` that pass `check_key` for `address`, in order."""
    found = []
    for data in keys:
        try:
            cert, _info = check_key(
                data, address, allow_address_mismatch=allow_address_mismatch, now=now
            )
        except KeyRefused:
            continue
        found.append(cert)
    return found


def usable(cert: pysequoia.Cert, now: datetime | None = None) -> bool:
    """Whether mail can be encrypted to `cert` now (the checks that change with time)."""
    now = now or datetime.now(UTC)
    try:
        revoked, expires = cert.is_revoked, cert.expiration
    except Exception:  # refused by Sequoia's policy (which also changes with time)
        return False
    if revoked or (expires is not None and expires <= now):
        return False
    try:
        encryption_subkeys(cert, now)
    except NoUsableKey:
        return False
    return True


def encryption_subkeys(
    cert: pysequoia.Cert, now: datetime | None = None, components: list[_Component] | None = None
) -> list[str]:
    """Key IDs of the subkeys Sequoia encrypts to now (every valid encryption-capable one);
    raises NoUsableKey when there is none."""
    return [_pkesk_key_id(body) for body in _trial_pkesks(cert, now, components)]


def _trial_pkesks(
    cert: pysequoia.Cert, now: datetime | None = None, components: list[_Component] | None = None
) -> list[bytes]:
    """The PKESK packet bodies of a message encrypted to `cert` now, one per subkey used.

    Found by encrypting nothing to the key, so it is exactly what delivery will do; raises
    NoUsableKey when there is none. The binding falls back to expired subkeys when no
    encryption subkey is alive (pysequoia's `encrypt`), and an expired subkey's secret may be
    gone: that is refused here too.
    """
    try:
        message = pysequoia.encrypt(b"", [cert], armor=False)
    except Exception as exc:
        raise NoUsableKey(f"no encryption-capable subkey valid now: {reason(exc)}") from None
    bodies = _pkesk_bodies(message)
    used = [_pkesk_key_id(body) for body in bodies]
    expiries = _subkey_expiries(components or _components(cert))
    ended = [expiries[key_id] for key_id in used if key_id in expiries]
    now = now or datetime.now(UTC)
    if used and len(ended) == len(used) and all(end <= now for end in ended):
        raise NoUsableKey(
            f"no encryption-capable subkey valid now: the last expired on {max(ended):%Y-%m-%d}"
        )
    return bodies


def pkesk_key_ids(message: bytes) -> list[str]:
    """Recipient key IDs of the PKESK packets an OpenPGP message starts with."""
    return [_pkesk_key_id(body) for body in _pkesk_bodies(message)]


def _pkesk_bodies(message: bytes) -> list[bytes]:
    """The bodies of the PKESK packets an OpenPGP message starts with, read from the packet
    headers alone (RFC 9580 section 4.2), so a large message is not parsed."""
    found, position = [], 0
    while position < len(message):
        first = message[position]
        if not first & 0x40:  # Sequoia writes only the current (new) packet format
            break
        length_octet = message[position + 1]
        if length_octet < 192:
            header, length = 2, length_octet
        elif length_octet < 224:
            header, length = 3, ((length_octet - 192) << 8) + message[position + 2] + 192
        elif length_octet == 255:
            header, length = 6, int.from_bytes(message[position + 2 : position + 6], "big")
        else:
            break  # partial body length: the encrypted data, never a PKESK
        if first & 0x3F != 1:
            break
        found.append(message[position + header : position + header + length])
        position += header + length
    return found


def user_id_address(user_id: str) -> str | None:
    """The email address of a user ID ("Name <a@b>" or a bare "a@b"); None for one that names
    none, or that the email package cannot read (it recurses into nested comments)."""
    try:
        _, found = email.utils.parseaddr(user_id)
    except RecursionError:
        return None
    return found if "@" in found else None


def key_algorithm(packet: object) -> str:
    """Short name of a key packet's algorithm: "rsa3072", "ed25519", "cv25519", "nistp256"..."""
    algorithm = int(packet.key_algorithm)  # type: ignore[attr-defined]
    material = _key_material(packet.body)  # type: ignore[attr-defined]
    if algorithm in _RSA:
        return f"rsa{_mpi_bits(material)}"
    if algorithm in _WEAK:
        return _WEAK[algorithm].lower()
    if algorithm in _ECC:
        oid = material[1 : 1 + material[0]] if material else b""
        return _CURVES.get(oid, "ecc")
    return repr(packet.key_algorithm).rsplit(".", 1)[-1].lower()  # type: ignore[attr-defined]


def key_packets(cert: pysequoia.Cert) -> list[object]:
    return [packet for packet in PacketPile.from_bytes(bytes(cert)) if packet.tag in _KEY_TAGS]


@dataclass
class _Component:
    """A key or user ID packet with the signatures that follow it in the key."""

    packet: object
    signatures: list[object]


def _components(cert: pysequoia.Cert) -> list[_Component]:
    found: list[_Component] = []
    for packet in PacketPile.from_bytes(bytes(cert)):
        if packet.tag == Tag.Signature and found:
            found[-1].signatures.append(packet)
        elif packet.tag != Tag.Signature:
            found.append(_Component(packet, []))
    return found


def _self_signatures(components: list[_Component], component: _Component) -> list[object]:
    """The signatures on `component` made by the primary key, newest first (Sequoia has
    checked the ones it uses; these are read for what the binding does not expose)."""
    primary = components[0].packet
    fingerprint, key_id = primary.fingerprint, primary.key_id  # type: ignore[attr-defined]
    own = [
        signature
        for signature in component.signatures
        if signature.issuer_fingerprint == fingerprint  # type: ignore[attr-defined]
        or signature.issuer_key_id == key_id  # type: ignore[attr-defined]
    ]
    return sorted(own, key=lambda signature: signature.signature_created, reverse=True)  # type: ignore[attr-defined]


def _revoked_user_ids(components: list[_Component]) -> set[str]:
    """User IDs with a self-revocation no older than their newest self-certification (one
    made in the same second counts as later: signature times have whole seconds)."""
    revoked = set()
    for component in components:
        if component.packet.tag != Tag.UserID:  # type: ignore[attr-defined]
            continue
        times: dict[bool, list[datetime]] = {True: [], False: []}
        for signature in _self_signatures(components, component):
            is_revocation = signature.signature_type == SignatureType.CertificationRevocation  # type: ignore[attr-defined]
            times[is_revocation].append(signature.signature_created)  # type: ignore[attr-defined]
        if times[True] and max(times[True]) >= max(times[False], default=max(times[True])):
            revoked.add(component.packet.user_id)  # type: ignore[attr-defined]
    return revoked


def _subkey_expiries(components: list[_Component]) -> dict[str, datetime]:
    """Key ID -> expiry of each subkey whose newest binding signature sets one."""
    found = {}
    for component in components:
        if component.packet.tag != Tag.PublicSubkey:  # type: ignore[attr-defined]
            continue
        bindings = [
            signature
            for signature in _self_signatures(components, component)
            if signature.signature_type == SignatureType.SubkeyBinding  # type: ignore[attr-defined]
        ]
        period = bindings[0].key_validity_period if bindings else None  # type: ignore[attr-defined]
        if period:
            created = component.packet.key_created  # type: ignore[attr-defined]
            found[component.packet.key_id] = created + timedelta(seconds=period.total_seconds())  # type: ignore[attr-defined]
    return found


def _features(components: list[_Component]) -> int | None:
    """The Features announced by the primary key's self-signatures (direct-key and user ID
    bindings) ORed together, or None when none carries the subpacket."""
    found = None
    for component in components:
        if component.packet.tag not in (Tag.PublicKey, Tag.UserID):  # type: ignore[attr-defined]
            continue
        for signature in _self_signatures(components, component):
            value = _hashed_subpacket(signature.body, _FEATURES_SUBPACKET)  # type: ignore[attr-defined]
            if value is not None:
                found = (found or 0) | (value[0] if value else 0)
    return found


def _hashed_subpacket(body: bytes, wanted: int) -> bytes | None:
    """The first hashed subpacket of type `wanted` in a version 4 or 6 signature packet body
    (RFC 9580 sections 5.2.3 and 5.2.3.7), or None."""
    if body[:1] == b"\x04":
        start, length = 6, int.from_bytes(body[4:6], "big")
    elif body[:1] == b"\x06":
        start, length = 8, int.from_bytes(body[4:8], "big")
    else:
        return None
    area, position = body[start : start + length], 0
    while position < len(area):
        first = area[position]
        if first < 192:
            size, position = first, position + 1
        elif first < 255:
            size = ((first - 192) << 8) + area[position + 1] + 192
            position += 2
        else:
            size = int.from_bytes(area[position + 1 : position + 5], "big")
            position += 5
        if size == 0:
            break
        if area[position] & 0x7F == wanted:
            return area[position + 1 : position + size]
        position += size
    return None


def _explained(message: str, components: list[_Component]) -> str:
    """A refusal of Sequoia's policy with the cause it does not name, when it is one of ours."""
    for component in components:
        if component.packet.tag in _KEY_TAGS:  # type: ignore[attr-defined]
            algorithm = key_algorithm(component.packet)
            if algorithm in UNSUPPORTED_CURVES:
                return f"{algorithm} keys are not supported by this server ({message})"
    for component in components:
        for signature in _self_signatures(components, component)[:1]:  # the one in force
            weak = _WEAK_HASHES.get(int(signature.hash_algorithm))  # type: ignore[attr-defined]
            if weak:
                return (
                    f"the key is signed with {weak}, which is no longer accepted for key "
                    f"signatures (RFC 9580 section 9.5; {message}); {_RENEW_SHA1}"
                )
    return message


def _check_strength(packet: object) -> None:
    algorithm = int(packet.key_algorithm)  # type: ignore[attr-defined]
    if algorithm in _WEAK:
        raise KeyRefused(f"{_WEAK[algorithm]} keys are too weak (key {packet.key_id})")  # type: ignore[attr-defined]
    if algorithm in _RSA:
        bits = _mpi_bits(_key_material(packet.body))  # type: ignore[attr-defined]
        if bits < MIN_RSA_BITS:
            raise KeyRefused(
                f"RSA-{bits} is too weak, at least {MIN_RSA_BITS} bits needed (key {packet.key_id})"  # type: ignore[attr-defined]
            )


def _key_material(body: bytes) -> bytes:
    """The algorithm-specific part of a key packet body (RFC 9580 section 5.5.2)."""
    if body[:1] == b"\x06":  # version, creation time, algorithm, 4-octet material length
        return body[10:]
    return body[6:]  # version 4: version, creation time, algorithm


def _mpi_bits(material: bytes) -> int:
    return int.from_bytes(material[:2], "big") if len(material) >= 2 else 0


def _pkesk_key_id(body: bytes) -> str:
    """The recipient key ID of a PKESK packet (version 3: octets 1-8; version 6: fingerprint)."""
    if body[:1] == b"\x03":
        return body[1:9].hex()
    length = body[1]
    fingerprint = body[3 : 2 + length]  # key version octet, then the fingerprint
    return fingerprint[-8:].hex() if len(fingerprint) == 20 else fingerprint[:8].hex()
