"""Hostile content through what the intake does with a message (trace fields, S/MIME
encryption with header protection, ENVELOPE/BODYSTRUCTURE of what is stored, and of the
message itself as IMAP would describe it if it were stored as it is): every case encrypts,
decrypts with OpenSSL to its canonical content, costs operations linear in its size and
memory bounded by a small multiple of it."""

from __future__ import annotations

import random
import re
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from encimap import mime, mimeinfo, smime
from encimap.delivery import trace
from encimap.mimeinfo import bodystructure
from tests import hostile_mail
from tests.opcount import best_cpu_time, lines_executed
from tests.smime_support import Identity, make_identity, openssl_decrypt_files
from tests.test_delivery_mbox_import import TRACE

# Peak memory of the whole pipeline for one message, in multiples of its size (the message,
# its encrypted copy, the base64 text and the plaintext pieces are each about one).
MEMORY_FACTOR = 40


@pytest.fixture(scope="module")
def identity(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return make_identity(tmp_path_factory.mktemp("hostile"))


def _pipeline(data: bytes, identity: Identity) -> bytes:
    stored = smime.encrypt_message(trace.prepare(data, TRACE).data, [identity.pem]).message
    mimeinfo.describe(stored)
    mimeinfo.describe(data)  # what is stored as it is (already encrypted, APPEND)
    return stored


def _expected_content(data: bytes) -> bytes:
    """What the encrypted part must hold after the protected header: the body, with CRLF
    line endings unless a part is binary."""
    body = data[mimeinfo.split_header(data, 0, len(data))[1] :]
    return body if b"binary" in data else mime.to_crlf(body)


@pytest.mark.parametrize("case", list(hostile_mail.CASES))
def test_hostile_message_is_encrypted_and_decrypts(case, identity):
    build, n = hostile_mail.CASES[case]
    data = build(n)
    stored = _pipeline(data, identity)
    plain = openssl_decrypt_files(stored, identity.cert_path, identity.key_path, "-binary")
    assert plain.endswith(_expected_content(data))
    assert b'hp="cipher"' in plain.split(b"\r\n\r\n", 1)[0]


@pytest.mark.parametrize("case", list(hostile_mail.CASES))
def test_hostile_message_costs_linear_operations(case, identity):
    build, n = hostile_mail.CASES[case]
    n = max(n // 10, 20)  # the operation counter slows Python down a lot
    counts = [lines_executed(_pipeline, build(n * k), identity) for k in (1, 2, 4)]
    assert counts[1] <= 2.2 * counts[0] + 200, counts
    assert counts[2] <= 4.4 * counts[0] + 400, counts


@pytest.mark.parametrize("case", list(hostile_mail.CASES))
def test_hostile_message_memory_is_bounded(case, identity):
    build, n = hostile_mail.CASES[case]
    data = build(n)
    tracemalloc.start()
    try:
        _pipeline(data, identity)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= MEMORY_FACTOR * len(data) + (1 << 20), (peak, len(data))


@pytest.mark.parametrize(
    "case", ["nested-multipart", "many-parts", "unclosed-boundary", "huge-boundary"]
)
def test_describe_cpu_time_grows_linearly(case):
    """What the operation count misses (time inside regex and bytes methods): four times the
    message, at most about four times the CPU time (a part's header searched to the end of
    the message made 2,000 more parts cost 16 times as much)."""
    build, n = hostile_mail.CASES[case]

    small, large = (best_cpu_time(mimeinfo.describe, build(m), 3) for m in (n, 4 * n))
    assert large <= 8 * small, (small, large)


def test_binary_parts_survive_any_nesting_depth(identity):
    """Binary bytes are never touched: not at the top, not 10,000 multiparts deep (where
    the canonicalisation stops descending and leaves the rest as it is)."""
    for depth in (3, 10_000):
        data = hostile_mail.nested_multipart(depth, binary=True)
        stored = _pipeline(data, identity)
        plain = openssl_decrypt_files(stored, identity.cert_path, identity.key_path, "-binary")
        assert plain.endswith(_expected_content(data))
        assert b"\r\n\r\n\x00\xff\r\x00\n\r\n--b" in plain


PIECES = [b"\r\n", b"\n", b"\r", b"--b", b"--b--", b"--bb", b"x", b"-", b"b", b" "]


def _delimiters_by_regex(raw: bytes, start: int, end: int, boundary: bytes) -> list[tuple]:
    """RFC 2046 delimiter lines as one regex finds them (what the canonicalisation used)."""
    found = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|\Z)")
    return [
        (start + match.start(), start + match.end(), match.group(1) is not None)
        for match in found.finditer(memoryview(raw)[start:end])
    ]


@settings(max_examples=3000)
@given(st.lists(st.sampled_from([*PIECES, b"\t"]), max_size=16).map(b"".join), st.randoms())
def test_delimiter_lines_are_the_regexs(data, rnd: random.Random):
    start = rnd.randint(0, len(data))
    end = rnd.randint(start, len(data))
    assert list(mime.delimiter_lines(data, start, end, b"b")) == _delimiters_by_regex(
        data, start, end, b"b"
    )


def test_delimiter_search_does_not_walk_the_lines():
    """Finding the delimiters costs per delimiter, not per line of the body: 4 times the
    lines cost the same operations (the old line-by-line loop made 20 nested levels of a
    many-line body cost 20 Python steps per line)."""

    def message(lines: int) -> bytes:
        return hostile_mail.nested_multipart(30).replace(b"\x00\xff", b"a\r\n" * lines)

    small, large = (lines_executed(mimeinfo.describe, message(n)) for n in (2_000, 8_000))
    assert large == small


def test_limits_are_dovecots():
    assert (bodystructure.MAX_DEPTH, bodystructure.MAX_PARTS) == (99, 10_000)
    structure = mimeinfo.describe(hostile_mail.nested_multipart(150)).bodystructure
    assert structure.count('"mixed"') == 99
    assert '("application" "octet-stream" ("boundary" "b99x")' in structure
    parts = mimeinfo.describe(hostile_mail.many_parts(12_000))
    assert len(parts.parts) <= 10_001
    assert len(re.findall(r'\("text" "plain"', parts.bodystructure)) == 9_999


@pytest.mark.parametrize(
    "field",
    [b"Subject: " + b"w " * 1_000_000, b"From: " + b"w " * 1_000_000 + b"<a@example.org>"],
    ids=["subject", "display-name"],
)
def test_long_one_line_fields_memory_is_bounded(field):
    """Lines only APPEND can bring (SMTP lines end at 1,000 bytes): a display string that is
    almost plain, a long display name. A regex group repeated per word kept state per word."""
    data = field + b"\r\n\r\nbody\r\n"
    tracemalloc.start()
    try:
        info = mimeinfo.describe(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(info.envelope) > 1_000_000  # the value is served
    assert peak <= MEMORY_FACTOR * len(data), (peak, len(data))


def test_nul_in_header_values_is_stored_as_a_replacement_character():
    """PostgreSQL's text and jsonb cannot hold a NUL: a From with one failed every delivery
    with a 451. Dovecot reads a NUL in a header as U+FFFD too."""
    info = mimeinfo.describe(hostile_mail.nul_and_8bit(3))
    stored = [info.envelope, info.bodystructure, info.body, *info.search.values()]
    assert not any("\0" in text for text in stored)
    assert "\ufffd" in info.envelope and "\ufffd" in info.search["from"]


def test_an_over_long_message_id_is_not_recorded():
    """It would not fit PostgreSQL's index on message_id: every delivery failed with a 451."""
    data = hostile_mail.long_message_id(100_000)
    prepared = trace.prepare(data, TRACE)
    assert len(prepared.message_id) <= trace.MAX_MESSAGE_ID
    assert prepared.message_id == trace.prepare(data, TRACE).message_id  # a retry: the same
    assert prepared.data.count(b"Message-ID:") == 1  # the message keeps its own field
    assert trace.prepare(hostile_mail.long_message_id(900), TRACE).message_id.startswith("<w.w")


def test_unrolled_parameter_regex_keeps_no_state_per_character():
    value = b'multipart/mixed; boundary="' + b"x" * 1_000_000 + b'"'
    tracemalloc.start()
    try:
        media, parameters = mime.parse_content_type(value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (media, len(parameters["boundary"])) == ("multipart/mixed", 1_000_000)
    assert peak < 5 * len(value), peak
