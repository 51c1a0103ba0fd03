"""Large messages: streamed in chunks, correct across chunk edges, bounded memory."""

from __future__ import annotations

import tracemalloc

import pytest
from cryptography.hazmat.primitives.serialization import pkcs7

from encimap.mime import CHUNK_SIZE
from encimap.smime import Profile, encrypt_message
from tests.smime_support import Identity, crlf, make_identity, openssl_decrypt, split_entity

HEADER = b"From: a@example.net\nTo: box@example.org\nSubject: big\n\n"


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return make_identity(tmp_path_factory.mktemp("large"))


def lf_body_with_crlf_across_chunk_edges(chunks: int) -> bytes:
    """LF lines, except a CRLF whose CR ends a conversion chunk and whose LF starts the next."""
    line = b"0123456789abcdef" * 4 + b"\n"
    body = bytearray(line * (chunks * CHUNK_SIZE // len(line) + 1))
    for edge in range(CHUNK_SIZE, len(body), CHUNK_SIZE):
        body[edge - 1 : edge + 1] = b"\r\n"
    return bytes(body)


@pytest.mark.parametrize("profile", [Profile.AES256_CBC, Profile.AES256_GCM])
def test_multi_chunk_lf_message_decrypts_to_its_crlf_form(identity, profile: Profile) -> None:
    body = lf_body_with_crlf_across_chunk_edges(3)
    result = encrypt_message(HEADER + body, [identity.pem], profile)
    _, decrypted = split_entity(openssl_decrypt(result.message, identity))
    assert decrypted == crlf(body)


def test_multi_chunk_crlf_message_is_unchanged_inside(identity) -> None:
    body = crlf(lf_body_with_crlf_across_chunk_edges(3))
    stored = encrypt_message(crlf(HEADER) + body, [identity.pem]).message
    decrypted = pkcs7.pkcs7_decrypt_smime(stored, identity.certificate, identity.key, [])
    assert split_entity(decrypted)[1] == body


@pytest.mark.parametrize("lf_only", [False, True], ids=["crlf", "lf"])
def test_peak_memory_growth_is_below_three_times_the_message(identity, lf_only: bool) -> None:
    body = lf_body_with_crlf_across_chunk_edges(8)
    raw = HEADER + (body if lf_only else crlf(body))
    tracemalloc.start()
    try:
        baseline = tracemalloc.get_traced_memory()[0]
        result = encrypt_message(raw, [identity.pem])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(result.message) > len(raw)
    assert peak - baseline < 3 * len(raw)
