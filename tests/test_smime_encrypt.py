"""encrypt_message: every profile and key type, decrypted independently by openssl."""

from __future__ import annotations

import base64
import email
import email.policy
import re

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives import hashes

from encimap.smime import (
    CertificateError,
    NoUsableCertificate,
    Profile,
    encrypt_message,
)
from encimap.smime import cms as smime_cms
from encimap.smime.certificates import fingerprint
from tests.smime_support import (
    KEY_MAKERS,
    Identity,
    crlf,
    make_identity,
    openssl_decrypt,
    openssl_decrypt_der,
    outer_headers,
    split_entity,
)

ADDRESS = "box@example.org"

PLAIN = b"""\
Received: from mx.example.net by mail.example.org; Mon, 1 Jan 2024 10:00:00 +0000\r
Return-Path: <alice@example.net>\r
From: Alice <alice@example.net>\r
To: box@example.org\r
Cc: carol@example.com\r
Bcc: hidden@example.com\r
Subject: Quarterly numbers\r
Date: Mon, 1 Jan 2024 10:00:00 +0000\r
Message-ID: <plain@example.net>\r
X-Mailer: secret-client 1.0\r
MIME-Version: 1.0\r
Content-Type: text/plain; charset=us-ascii\r
\r
Hello,\r
the numbers are attached.\r
"""

ALTERNATIVE = b"""\
From: Alice <alice@example.net>\r
To: box@example.org\r
Subject: HTML inside\r
Message-ID: <alt@example.net>\r
In-Reply-To: <earlier@example.org>\r
References: <first@example.org>\r
 <earlier@example.org>\r
MIME-Version: 1.0\r
Content-Type: multipart/alternative;\r
 boundary="==alt=="\r
\r
--==alt==\r
Content-Type: text/plain; charset=utf-8\r
Content-Transfer-Encoding: quoted-printable\r
\r
Gr=C3=BC=C3=9Fe\r
--==alt==\r
Content-Type: text/html; charset=utf-8\r
Content-Transfer-Encoding: 8bit\r
\r
<p>Gr\xc3\xbc\xc3\x9fe</p>\r
--==alt==--\r
"""

NON_ASCII_HEADERS = (
    b"From: =?utf-8?q?J=C3=BCrgen_M=C3=BCller?= <j@example.de>\r\n"
    b"To: box@example.org\r\n"
    b"Subject: =?utf-8?b?w5xiZXJyYXNjaHVuZyDwn46J?=\r\n"
    b"  =?utf-8?q?_und_mehr?=\r\n"
    b"X-Raw-Utf8: Stra\xc3\x9fe\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
)

LONG_LINES = (
    b"From: a@example.net\r\nTo: box@example.org\r\nSubject: long\r\n\r\n"
    + b"x" * 5000
    + b"\r\n"
    + b"y" * 998
    + b"\r\n"
)

LF_ONLY = PLAIN.replace(b"\r\n", b"\n")

ATTACHMENT = base64.encodebytes(bytes(range(256)) * 8).replace(b"\n", b"\r\n")
BINARY_PART = b"\x00\r\x0a\x0a\x0d\xff raw\nbytes\r\n\x00 stay\n"
WITH_ATTACHMENTS = (
    b"From: a@example.net\n"
    b"To: box@example.org\n"
    b"Subject: files\n"
    b"MIME-Version: 1.0\n"
    b'Content-Type: multipart/mixed; boundary="b1"\n'
    b"\n"
    b"preamble\n"
    b"--b1\n"
    b"Content-Type: text/plain; charset=iso-8859-1\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"\n"
    b"S\xfc\xdf\n"
    b"--b1\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: base64\n"
    b"\n" + ATTACHMENT.replace(b"\r\n", b"\n") + b"--b1\n"
    b"Content-Type: application/octet-stream\n"
    b"Content-Transfer-Encoding: binary\n"
    b"\n" + BINARY_PART + b"\n"
    b"--b1--\n"
)

MESSAGES = {
    "plain": PLAIN,
    "alternative": ALTERNATIVE,
    "non-ascii-headers": NON_ASCII_HEADERS,
    "long-lines": LONG_LINES,
    "lf-only": LF_ONLY,
}

KEY_TYPES = ["rsa-2048", "ec-p256", "ec-p384"]


@pytest.fixture(scope="module")
def keydir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("encrypt")


@pytest.fixture(scope="module")
def identities(keydir) -> dict[str, Identity]:
    return {kind: make_identity(keydir, ADDRESS, key=kind) for kind in [*KEY_TYPES, "rsa-1024"]}


def decrypt(stored: bytes, identity: Identity, **options) -> tuple[bytes, bytes]:
    """(inner header, inner body) as openssl decrypts them."""
    return split_entity(openssl_decrypt(stored, identity, **options))


def original_parts(raw: bytes) -> tuple[bytes, bytes]:
    header, _, body = crlf(raw).partition(b"\r\n\r\n")
    return header + b"\r\n", body


@pytest.mark.parametrize("profile", list(Profile))
@pytest.mark.parametrize("key_type", KEY_TYPES)
@pytest.mark.parametrize("name", list(MESSAGES))
def test_every_profile_and_key_type_decrypts_to_the_protected_entity(
    identities, profile: Profile, key_type: str, name: str
) -> None:
    raw = MESSAGES[name]
    result = encrypt_message(raw, [identities[key_type].pem], profile)
    inner_header, inner_body = decrypt(result.message, identities[key_type])
    original_header, original_body = original_parts(raw)
    assert inner_body == original_body
    # Every original field is inside, byte for byte; the Content-Type gains the hp marks.
    content_type = re.compile(rb"(?im)^content-type:.*(?:\r\n[ \t].*)*\r\n")
    assert content_type.sub(b"", inner_header).startswith(content_type.sub(b"", original_header))
    assert b'hp="cipher"; protected-headers="v1"' in content_type.search(inner_header).group()
    assert b"\r\nHP-Outer: Subject: [...]\r\n" in inner_header
    kind = "ecdh" if key_type.startswith("ec") else ("rsa-oaep" if profile == "rsa-oaep" else "rsa")
    assert result.algorithm.endswith(f"/{kind}")


def test_default_profile_also_decrypts_with_openssl_smime(identities) -> None:
    result = encrypt_message(PLAIN, [identities["rsa-2048"].pem])
    assert result.algorithm == "aes256-cbc/rsa"
    header, body = decrypt(result.message, identities["rsa-2048"], command="smime")
    assert body == original_parts(PLAIN)[1]
    assert b"Bcc: hidden@example.com\r\n" in header


def test_outer_headers_hide_subject_bcc_and_everything_else(identities) -> None:
    stored = encrypt_message(PLAIN, [identities["rsa-2048"].pem]).message
    outer = outer_headers(stored)
    assert list(outer) == [
        "received",
        "return-path",
        "from",
        "to",
        "cc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-disposition",
        "content-transfer-encoding",
    ]
    assert outer["subject"] == ["[...]"]
    assert outer["content-type"] == [
        'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"'
    ]
    assert outer["content-disposition"] == ['attachment; filename="smime.p7m"']
    header, _ = decrypt(stored, identities["rsa-2048"])
    assert b"\r\nSubject: Quarterly numbers\r\n" in header
    assert b"\r\nX-Mailer: secret-client 1.0\r\n" in header
    assert b"HP-Outer: Received" not in header


def test_stored_message_is_crlf_with_76_column_base64(identities) -> None:
    stored = encrypt_message(LF_ONLY, [identities["rsa-2048"].pem]).message
    assert stored.count(b"\n") == stored.count(b"\r\n")
    _, body = split_entity(stored)
    lines = body.split(b"\r\n")
    assert lines[-1] == b""
    assert all(len(line) == 76 for line in lines[:-2]) and 0 < len(lines[-2]) <= 76
    base64.b64decode(b"".join(lines), validate=True)


def test_visible_subject_when_not_hidden(identities) -> None:
    result = encrypt_message(PLAIN, [identities["ec-p256"].pem], hide_subject=False)
    assert outer_headers(result.message)["subject"] == ["Quarterly numbers"]
    header, _ = decrypt(result.message, identities["ec-p256"])
    assert b"\r\nHP-Outer: Subject: Quarterly numbers\r\n" in header


def test_authenticated_profile_is_labelled_auth_enveloped(identities) -> None:
    result = encrypt_message(PLAIN, [identities["rsa-2048"].pem], "aes256-gcm")
    assert outer_headers(result.message)["content-type"] == [
        'application/pkcs7-mime; smime-type=authEnveloped-data; name="smime.p7m"'
    ]


def test_binary_parts_are_untouched_and_text_becomes_crlf(identities) -> None:
    stored = encrypt_message(WITH_ATTACHMENTS, [identities["rsa-2048"].pem]).message
    header, body = decrypt(stored, identities["rsa-2048"])
    binary_start = body.index(b"binary\r\n\r\n") + len(b"binary\r\n\r\n")
    assert body[binary_start:] == BINARY_PART + b"\r\n--b1--\r\n"
    text = body[:binary_start]
    assert text.count(b"\n") == text.count(b"\r\n")
    assert body.startswith(b"preamble\r\n--b1\r\n")
    parsed = email.message_from_bytes(header + b"\r\n" + text, policy=email.policy.default)
    latin, attachment = parsed.get_payload()[:2]
    assert latin.get_content() == "S\xfc\xdf"
    assert attachment.get_payload(decode=True) == bytes(range(256)) * 8


def test_each_of_two_certificates_alone_decrypts(identities) -> None:
    old, new = identities["rsa-2048"], identities["ec-p256"]
    result = encrypt_message(PLAIN, [old.pem, new.pem], "rsa-oaep")
    assert result.algorithm == "aes256-cbc/ecdh+rsa-oaep"
    assert result.recipient_fingerprints == tuple(
        identity.certificate.fingerprint(hashes.SHA256()).hex() for identity in (old, new)
    )
    assert decrypt(result.message, old) == decrypt(result.message, new)


@pytest.mark.parametrize("profile", list(Profile))
def test_subject_is_encrypted_on_its_own(identities, profile: Profile) -> None:
    result = encrypt_message(NON_ASCII_HEADERS, [identities["ec-p384"].pem], profile)
    der = base64.b64decode(result.subject_encrypted)
    assert openssl_decrypt_der(der, identities["ec-p384"]) == (
        b"=?utf-8?b?w5xiZXJyYXNjaHVuZyDwn46J?=  =?utf-8?q?_und_mehr?="
    )


@pytest.mark.parametrize("profile", [Profile.AES256_CBC, Profile.AES256_GCM])
def test_subject_shares_the_body_content_key_with_its_own_iv(identities, profile) -> None:
    """One public-key operation per certificate and message: the subject's envelope carries the
    body's recipient infos (the same transported key), but never the body's IV or nonce."""
    recipients = [identities["rsa-2048"].pem, identities["ec-p256"].pem]
    result = encrypt_message(PLAIN, recipients, profile)
    _header, base64_body = split_entity(result.message)
    body = cms.ContentInfo.load(base64.b64decode(base64_body))["content"]
    subject = cms.ContentInfo.load(base64.b64decode(result.subject_encrypted))["content"]
    assert body["recipient_infos"].dump() == subject["recipient_infos"].dump()
    info = (
        "auth_encrypted_content_info" if profile == Profile.AES256_GCM else "encrypted_content_info"
    )
    parameters = [
        envelope[info]["content_encryption_algorithm"]["parameters"].dump()
        for envelope in (body, subject)
    ]
    assert parameters[0] != parameters[1]
    for identity in (identities["rsa-2048"], identities["ec-p256"]):
        assert (
            openssl_decrypt_der(base64.b64decode(result.subject_encrypted), identity)
            == b"Quarterly numbers"
        )


def test_message_without_subject_or_header_fields(identities) -> None:
    result = encrypt_message(b"\r\nbody only\r\n", [identities["rsa-2048"].pem])
    assert result.subject_encrypted is None
    assert "subject" not in outer_headers(result.message)
    header, body = decrypt(result.message, identities["rsa-2048"])
    assert header == (
        b'Content-Type: text/plain; charset=us-ascii;\r\n hp="cipher"; protected-headers="v1"\r\n'
    )
    assert body == b"body only\r\n"


@pytest.mark.parametrize(
    "content_type",
    [
        b'application/pkcs7-mime; smime-type=enveloped-data; name="smime.p7m"',
        b"application/x-pkcs7-mime; smime-type=authEnveloped-data",
        b'multipart/encrypted; protocol="application/pgp-encrypted"; boundary="x"',
    ],
)
def test_already_encrypted_mail_passes_unchanged(content_type: bytes) -> None:
    raw = b"From: a@example.net\nSubject: secret\nContent-Type: " + content_type + b"\n\nMIAGCSqG\n"
    result = encrypt_message(raw, [])
    assert result.already_encrypted
    assert result.message is raw
    assert (result.subject_encrypted, result.algorithm, result.recipient_fingerprints) == (
        None,
        None,
        (),
    )


def test_our_own_output_is_recognised_as_encrypted(identities) -> None:
    stored = encrypt_message(PLAIN, [identities["rsa-2048"].pem]).message
    assert encrypt_message(stored, [identities["rsa-2048"].pem]).already_encrypted


def test_old_style_pkcs7_without_smime_type_is_recognised_by_its_content(identities) -> None:
    stored = encrypt_message(PLAIN, [identities["rsa-2048"].pem]).message
    old_style = stored.replace(b"smime-type=enveloped-data; ", b"")
    assert encrypt_message(old_style, []).already_encrypted


def test_signed_data_is_encrypted(identities) -> None:
    raw = (
        b"From: a@example.net\r\nContent-Type: application/pkcs7-mime; "
        b"smime-type=signed-data\r\n\r\nMIAGCSqG\r\n"
    )
    assert not encrypt_message(raw, [identities["rsa-2048"].pem]).already_encrypted


def test_no_certificate_is_refused() -> None:
    with pytest.raises(NoUsableCertificate):
        encrypt_message(PLAIN, [])


def test_weak_certificate_is_refused_even_unchecked(identities) -> None:
    with pytest.raises(CertificateError, match="too weak"):
        encrypt_message(PLAIN, [identities["rsa-1024"].pem])


def test_unknown_profile_names_the_valid_ones(identities) -> None:
    with pytest.raises(ValueError, match="aes256-cbc, aes128-cbc, rsa-oaep, aes256-gcm"):
        encrypt_message(PLAIN, [identities["rsa-2048"].pem], "des3")


def test_round_robin_over_many_certificates_prepares_each_once(tmp_path) -> None:
    """Delivery round-robin to more vaultboxes than a small cache would hold derives what
    encryption needs from each certificate once, not again for every message."""
    key = KEY_MAKERS["rsa-2048"]()
    certificates = [
        make_identity(tmp_path, f"box{n}@example.org", key=key).certificate for n in range(1100)
    ]
    message = crlf(b"From: a@example.org\nTo: box@example.org\nSubject: s\n\nbody\n")
    for certificate in certificates:
        encrypt_message(message, [certificate])
    misses = smime_cms._recipient.cache_info().misses, fingerprint.cache_info().misses
    for certificate in certificates:
        encrypt_message(message, [certificate])
    assert (smime_cms._recipient.cache_info().misses, fingerprint.cache_info().misses) == misses
