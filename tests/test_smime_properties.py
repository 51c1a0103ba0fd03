"""Property: decrypt(encrypt(m)) is m canonicalised, with header protection added."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from encimap import mime
from encimap.smime import Profile, encrypt_message
from tests.smime_support import Identity, crlf, make_identity, openssl_decrypt

# The module-scoped key is shared on purpose: it never changes between examples.
FIXTURE_OK = [HealthCheck.function_scoped_fixture]
HP_MARK = b';\r\n hp="cipher"; protected-headers="v1"'
FIELD_NAMES = ["From", "To", "Cc", "Bcc", "Subject", "Date", "Message-ID", "Received", "X-Note"]

line_ending = st.sampled_from([b"\n", b"\r\n"])
value_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=40
).map(str.encode)


@st.composite
def header_field(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(FIELD_NAMES)).encode()
    lines = draw(st.lists(value_text, min_size=1, max_size=3))
    folded = b"".join(b" " + line + draw(line_ending) for line in lines[1:])
    return name + b": " + lines[0] + draw(line_ending) + folded


@st.composite
def message(draw: st.DrawFn) -> bytes:
    fields = b"".join(draw(st.lists(header_field(), max_size=8)))
    content_type = b"Content-Type: text/plain; charset=utf-8" + draw(line_ending)
    body_lines = draw(st.lists(st.binary(max_size=120), max_size=20))
    body = b"".join(line.replace(b"\n", b"") + draw(line_ending) for line in body_lines)
    raw = fields + content_type + draw(line_ending) + body + draw(st.binary(max_size=10))
    # Hypothesis also draws the code's own constants, such as the armour line of inline
    # OpenPGP; a body that begins with it is stored as it is (test_openpgp_intake.py)
    assume(not mime.is_encrypted(mime.parse_message(raw)))
    return raw


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return make_identity(tmp_path_factory.mktemp("properties"))


def expected_entity(raw: bytes) -> bytes:
    """The original, CRLF everywhere, Content-Type marked and first: what the recipient must
    see."""
    canonical = crlf(raw)
    header, _, body = canonical.partition(b"\r\n\r\n")
    others, _, content_type = header.rpartition(b"\r\n")  # generated last, moved first
    fields = others + b"\r\n" if others else b""
    return content_type + HP_MARK + b"\r\n" + fields + _hp_outer(header) + b"\r\n" + body


def _hp_outer(header: bytes) -> bytes:
    """HP-Outer copies of the fields shown outside (Subject as the placeholder)."""
    copies = []
    for field in header.replace(b"\r\n ", b"\x00").split(b"\r\n"):
        name = field.split(b":", 1)[0]
        field = field.replace(b"\x00", b"\r\n ")
        if name == b"Subject":
            copies.append(b"HP-Outer: Subject: [...]\r\n")
        elif name in (b"From", b"To", b"Cc", b"Date", b"Message-ID"):
            copies.append(b"HP-Outer: " + field + b"\r\n")
    return b"".join(copies)


@settings(max_examples=150, deadline=None, suppress_health_check=FIXTURE_OK)
@given(raw=message(), profile=st.sampled_from([Profile.AES256_CBC, Profile.AES128_CBC]))
def test_roundtrip_with_cryptography(identity: Identity, raw: bytes, profile: Profile) -> None:
    stored = encrypt_message(raw, [identity.pem], profile).message
    decrypted = pkcs7.pkcs7_decrypt_smime(stored, identity.certificate, identity.key, [])
    assert decrypted == expected_entity(raw)


@settings(max_examples=15, deadline=None, suppress_health_check=FIXTURE_OK)
@given(raw=message(), profile=st.sampled_from(list(Profile)))
def test_roundtrip_with_openssl(identity: Identity, raw: bytes, profile: Profile) -> None:
    stored = encrypt_message(raw, [identity.pem], profile).message
    assert openssl_decrypt(stored, identity) == expected_entity(raw)
