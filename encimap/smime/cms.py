"""CMS EnvelopedData (RFC 5652) and AuthEnvelopedData (RFC 5083) built as a DER byte stream.

One code path for every profile: asn1crypto encodes the small structures (recipient infos,
algorithm identifiers) and this module writes the framing around the encrypted content itself.
The content length is known in advance (CBC pads to the next block, GCM does not pad), so the
definite-length DER header can be written first and the ciphertext streamed after it without
ever holding a second copy of a large message.

Recipients: RSA certificates get a KeyTransRecipientInfo (PKCS#1 v1.5, or RSA-OAEP SHA-256 per
RFC 8017/RFC 4055); EC certificates get a KeyAgreeRecipientInfo with ephemeral-static ECDH
(RFC 5753), X9.63 KDF and AES key wrap (RFC 3565). Both kinds mix in one envelope.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum

from asn1crypto import algos, cms, core, keys
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.x963kdf import X963KDF
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from encimap.smime.certificates import PREPARED_CERTIFICATES, key_algorithm
from encimap.smime.errors import NoUsableCertificate, SMIMEError

CHUNK_SIZE = 1 << 20
GCM_NONCE_BYTES = 12
GCM_TAG_BYTES = 16
AES_BLOCK_BYTES = 16

OID_DATA = "1.2.840.113549.1.7.1"
OID_ENVELOPED_DATA = "1.2.840.113549.1.7.3"
OID_AUTH_ENVELOPED_DATA = "1.2.840.113549.1.9.16.1.23"
OID_AES128_CBC = "2.16.840.1.101.3.4.1.2"
OID_AES256_CBC = "2.16.840.1.101.3.4.1.42"
OID_AES256_GCM = "2.16.840.1.101.3.4.1.46"
# RFC 5753 section 7.1.4 (SEC 1 names): dhSinglePass-stdDH-sha256kdf-scheme / sha384kdf.
OID_ECDH_SHA256_KDF = "1.3.132.1.11.1"
OID_ECDH_SHA384_KDF = "1.3.132.1.11.2"


class Profile(StrEnum):
    """Content encryption profiles a vaultbox can choose (config `smime.default_profile`)."""

    AES256_CBC = "aes256-cbc"  # what every client decrypts: the default
    AES128_CBC = "aes128-cbc"
    RSA_OAEP = "rsa-oaep"  # AES-256-CBC, RSA recipients use RSA-OAEP SHA-256
    AES256_GCM = "aes256-gcm"  # AuthEnvelopedData, RFC 5083/5084; Outlook cannot read it


@dataclass(frozen=True, slots=True)
class _Scheme:
    content: str
    content_oid: str
    key_bytes: int
    authenticated: bool = False
    rsa_oaep: bool = False


_SCHEMES = {
    Profile.AES256_CBC: _Scheme("aes256-cbc", OID_AES256_CBC, 32),
    Profile.AES128_CBC: _Scheme("aes128-cbc", OID_AES128_CBC, 16),
    Profile.RSA_OAEP: _Scheme("aes256-cbc", OID_AES256_CBC, 32, rsa_oaep=True),
    Profile.AES256_GCM: _Scheme("aes256-gcm", OID_AES256_GCM, 32, authenticated=True),
}


class _AlgorithmIdentifier(core.Sequence):
    """AlgorithmIdentifier for OIDs whose parameters asn1crypto does not know."""

    _fields = [
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class _GcmParameters(core.Sequence):
    """GCMParameters, RFC 5084 section 3.2."""

    _fields = [
        ("aes_nonce", core.OctetString),
        ("aes_icv_len", core.Integer, {"default": 12}),
    ]


class _EccCmsSharedInfo(core.Sequence):
    """ECC-CMS-SharedInfo, RFC 5753 section 7.2: the X9.63 KDF's shared info."""

    _fields = [
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


_OAEP_PARAMETERS = algos.RSAESOAEPParams(
    {
        "hash_algorithm": {"algorithm": "sha256"},
        "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": {"algorithm": "sha256"}},
    }
)


@dataclass(frozen=True, slots=True)
class Envelope:
    """A content encryption ready to run: recipients prepared, content key chosen.

    `chunks` yields the DER ContentInfo piece by piece; iterate it once. `smime_type` is the
    Content-Type parameter that names the structure (RFC 8551 section 3.2.2).
    """

    algorithm: str
    smime_type: str
    chunks: Iterator[bytes]


def profile_of(profile: Profile | str) -> Profile:
    """Profile from its name; ValueError lists the valid names."""
    try:
        return Profile(profile)
    except ValueError:
        names = ", ".join(p.value for p in Profile)
        raise ValueError(f"unknown S/MIME profile {profile!r} (choose one of {names})") from None


@dataclass(frozen=True, slots=True)
class ContentKey:
    """A fresh content-encryption key, already transported to every certificate.

    The public-key work (one RSA operation or ECDH agreement per certificate) happens once in
    `content_key()`; `envelope()` and `der()` can then encrypt several contents under this key,
    each with a fresh IV (or GCM nonce) and the same recipient infos. A message's body and its
    encrypted subject share one key: both go to the same certificates, so whoever can open one
    can open the other, and the second costs no public-key operation.
    """

    scheme: _Scheme
    key: bytes
    recipient_infos: tuple[bytes, ...]
    algorithm: str  # content and key management, such as "aes256-cbc/ecdh+rsa"

    def envelope(self, pieces: Iterable[bytes | memoryview], length: int) -> Envelope:
        """Encrypt the concatenation of `pieces` (`length` bytes)."""
        if self.scheme.authenticated:
            chunks = _auth_enveloped_data(pieces, length, self.key, self.recipient_infos)
            smime_type = "authEnveloped-data"
        else:
            chunks = _enveloped_data(pieces, length, self.key, self.recipient_infos, self.scheme)
            smime_type = "enveloped-data"
        return Envelope(algorithm=self.algorithm, smime_type=smime_type, chunks=chunks)

    def der(self, content: bytes) -> bytes:
        """The whole DER ContentInfo for a small content (such as a subject)."""
        return b"".join(self.envelope([content], len(content)).chunks)


def content_key(
    certificates: Sequence[x509.Certificate], profile: Profile | str = Profile.AES256_CBC
) -> ContentKey:
    """A new content key for `profile`, transported to every certificate at once.

    Certificates are validated for their key type here (CertificateError); the caller checks
    dates, usage and address beforehand with `check_certificate`.
    """
    if not certificates:
        raise NoUsableCertificate("no certificate to encrypt to")
    scheme = _SCHEMES[profile_of(profile)]
    key = os.urandom(scheme.key_bytes)
    kinds = set()
    recipient_infos = []
    for certificate in certificates:
        kind, recipient_info = _recipient_info(certificate, key, scheme)
        kinds.add(kind)
        recipient_infos.append(recipient_info)
    algorithm = f"{scheme.content}/{'+'.join(sorted(kinds))}"
    return ContentKey(scheme, key, tuple(recipient_infos), algorithm)


def _enveloped_data(
    pieces: Iterable[bytes | memoryview],
    length: int,
    content_key: bytes,
    recipient_infos: Sequence[bytes],
    scheme: _Scheme,
) -> Iterator[bytes]:
    iv = os.urandom(AES_BLOCK_BYTES)
    encryptor = Cipher(algorithms.AES(content_key), modes.CBC(iv)).encryptor()
    pad = AES_BLOCK_BYTES - length % AES_BLOCK_BYTES
    algorithm = _tlv(0x30, _oid(scheme.content_oid) + _tlv(0x04, iv))  # IV as parameters
    # RFC 5652 section 6.1: version 2 as soon as a recipient info is not version 0 (kari is 3).
    version = 2 if any(_is_key_agreement(info) for info in recipient_infos) else 0
    yield _content_info_head(
        OID_ENVELOPED_DATA, version, recipient_infos, algorithm, length + pad, 0
    )
    for chunk in _chunks(pieces, length):
        yield encryptor.update(chunk)
    yield encryptor.update(bytes([pad]) * pad) + encryptor.finalize()


def _auth_enveloped_data(
    pieces: Iterable[bytes | memoryview],
    length: int,
    content_key: bytes,
    recipient_infos: Sequence[bytes],
) -> Iterator[bytes]:
    nonce = os.urandom(GCM_NONCE_BYTES)
    encryptor = Cipher(algorithms.AES(content_key), modes.GCM(nonce)).encryptor()
    parameters = _GcmParameters({"aes_nonce": nonce, "aes_icv_len": GCM_TAG_BYTES})
    algorithm = _AlgorithmIdentifier({"algorithm": OID_AES256_GCM, "parameters": parameters})
    mac_length = 2 + GCM_TAG_BYTES
    yield _content_info_head(
        OID_AUTH_ENVELOPED_DATA, 0, recipient_infos, algorithm.dump(), length, mac_length
    )
    for chunk in _chunks(pieces, length):
        yield encryptor.update(chunk)
    encryptor.finalize()
    yield core.OctetString(encryptor.tag).dump()


def _content_info_head(
    content_type: str,
    version: int,
    recipient_infos: Sequence[bytes],
    content_algorithm: bytes,
    ciphertext_length: int,
    trailer_length: int,
) -> bytes:
    """DER of the ContentInfo up to the first ciphertext byte.

    ContentInfo { contentType, [0] EXPLICIT { version, recipientInfos,
    EncryptedContentInfo { id-data, algorithm, [0] IMPLICIT ciphertext } <trailer> } },
    where the trailer (the GCM mac) follows the ciphertext.
    """
    version_der = _integer(version)
    # DER orders the elements of a SET OF by their encodings.
    recipients_der = _tlv(0x31, b"".join(sorted(recipient_infos)))
    encrypted_head = _oid(OID_DATA) + content_algorithm + _header(0x80, ciphertext_length)
    encrypted_length = len(encrypted_head) + ciphertext_length
    body_head = version_der + recipients_der + _header(0x30, encrypted_length) + encrypted_head
    body_length = len(body_head) + ciphertext_length + trailer_length
    sequence_head = _header(0x30, body_length)
    explicit_head = _header(0xA0, len(sequence_head) + body_length)
    type_der = _oid(content_type)
    outer_length = len(type_der) + len(explicit_head) + len(sequence_head) + body_length
    return _header(0x30, outer_length) + type_der + explicit_head + sequence_head + body_head


# DER of the few OIDs and small integers every envelope repeats.
@functools.cache
def _oid(dotted: str) -> bytes:
    return core.ObjectIdentifier(dotted).dump()


@functools.cache
def _integer(value: int) -> bytes:
    return core.Integer(value).dump()


def _header(tag: int, length: int) -> bytes:
    """DER identifier and definite length octets."""
    if length < 0x80:
        return bytes((tag, length))
    size = (length.bit_length() + 7) // 8
    return bytes((tag, 0x80 | size)) + length.to_bytes(size, "big")


def _tlv(tag: int, value: bytes) -> bytes:
    return _header(tag, len(value)) + value


def _chunks(pieces: Iterable[bytes | memoryview], length: int) -> Iterator[memoryview]:
    """Pieces cut to at most CHUNK_SIZE; the total must be the length the DER announced."""
    total = 0
    for piece in pieces:
        view = memoryview(piece)
        total += len(view)
        for start in range(0, len(view), CHUNK_SIZE):
            yield view[start : start + CHUNK_SIZE]
    if total != length:
        raise SMIMEError(f"content was {total} bytes, not the {length} announced")


def _is_key_agreement(recipient_info: bytes) -> bool:
    # kari is [1] IMPLICIT in the RecipientInfo CHOICE; ktri is a plain SEQUENCE.
    return recipient_info[0] == 0xA1


def _recipient_info(
    certificate: x509.Certificate, content_key: bytes, scheme: _Scheme
) -> tuple[str, bytes]:
    """(key management name, DER RecipientInfo) for one certificate."""
    public_key, rid = _recipient(certificate)
    if isinstance(public_key, rsa.RSAPublicKey):
        return _key_transport(public_key, rid, content_key, oaep=scheme.rsa_oaep)
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    return "ecdh", _key_agreement(public_key, cms.IssuerAndSerialNumber.load(rid), content_key)


@functools.lru_cache(maxsize=PREPARED_CERTIFICATES)
def _recipient(
    certificate: x509.Certificate,
) -> tuple[rsa.RSAPublicKey | ec.EllipticCurvePublicKey, bytes]:
    """(public key, DER IssuerAndSerialNumber) of a usable certificate.

    Cached: the intake encrypts message after message to the same few certificates, and
    parsing them again (asn1crypto) cost more than the RSA operation itself.
    """
    key_algorithm(certificate)  # refuses weak RSA and unsupported curves or key types
    parsed = asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))
    rid = cms.IssuerAndSerialNumber(
        {"issuer": parsed.issuer, "serial_number": parsed.serial_number}
    )
    public_key = certificate.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
    return public_key, rid.dump()


# KeyTransRecipientInfo parts that do not change (RFC 5652 6.2.1): version 0 (the rid is an
# IssuerAndSerialNumber) and the key encryption algorithms.
_KTRI_VERSION = _integer(0)
# RFC 3370 section 4.2.1: rsaEncryption carries NULL parameters.
_RSA_PKCS1V15 = cms.KeyEncryptionAlgorithm(
    {"algorithm": "rsaes_pkcs1v15", "parameters": core.Null()}
).dump()
_RSA_OAEP = cms.KeyEncryptionAlgorithm(
    {"algorithm": "rsaes_oaep", "parameters": _OAEP_PARAMETERS}
).dump()


def _key_transport(
    public_key: rsa.RSAPublicKey, rid: bytes, content_key: bytes, *, oaep: bool
) -> tuple[str, bytes]:
    """DER KeyTransRecipientInfo (the untagged `ktri` choice of RecipientInfo)."""
    if oaep:
        mgf = padding.MGF1(hashes.SHA256())
        encrypted_key = public_key.encrypt(content_key, padding.OAEP(mgf, hashes.SHA256(), None))
        algorithm = _RSA_OAEP
    else:
        encrypted_key = public_key.encrypt(content_key, padding.PKCS1v15())
        algorithm = _RSA_PKCS1V15
    name = "rsa-oaep" if oaep else "rsa"
    return name, _tlv(0x30, _KTRI_VERSION + rid + algorithm + _tlv(0x04, encrypted_key))


def _key_agreement(
    public_key: ec.EllipticCurvePublicKey, rid: cms.IssuerAndSerialNumber, content_key: bytes
) -> bytes:
    """KeyAgreeRecipientInfo with a fresh ephemeral key (RFC 5753 section 3.1.1)."""
    if public_key.curve.name == "secp384r1":
        kdf_oid, kdf_hash = OID_ECDH_SHA384_KDF, hashes.SHA384()
    else:
        kdf_oid, kdf_hash = OID_ECDH_SHA256_KDF, hashes.SHA256()
    wrap = cms.KeyEncryptionAlgorithm(
        {"algorithm": "aes256_wrap" if len(content_key) == 32 else "aes128_wrap"}
    )
    shared_info = _EccCmsSharedInfo(
        {"key_info": wrap, "supp_pub_info": (len(content_key) * 8).to_bytes(4, "big")}
    )
    ephemeral = ec.generate_private_key(public_key.curve)
    key_encryption_key = X963KDF(
        algorithm=kdf_hash, length=len(content_key), sharedinfo=shared_info.dump()
    ).derive(ephemeral.exchange(ec.ECDH(), public_key))
    originator = keys.PublicKeyInfo(
        {
            # Parameters absent: the curve is the recipient's (as OpenSSL writes it).
            "algorithm": {"algorithm": "ec"},
            "public_key": ephemeral.public_key().public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            ),
        }
    )
    info = cms.KeyAgreeRecipientInfo(
        {
            "version": "v3",
            "originator": cms.OriginatorIdentifierOrKey(name="originator_key", value=originator),
            "key_encryption_algorithm": {"algorithm": kdf_oid, "parameters": wrap},
            "recipient_encrypted_keys": [
                {
                    "rid": cms.KeyAgreementRecipientIdentifier(
                        name="issuer_and_serial_number", value=rid
                    ),
                    "encrypted_key": aes_key_wrap(key_encryption_key, content_key),
                }
            ],
        }
    )
    return cms.RecipientInfo(name="kari", value=info).dump()
