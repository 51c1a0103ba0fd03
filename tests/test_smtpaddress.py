"""The MAIL/RCPT address parser: one reading of each address, refused when ambiguous,
canonical output that parses back to itself, cost linear in the input."""

from __future__ import annotations

import pytest
from aiosmtpd.smtp import SMTP
from hypothesis import given, settings
from hypothesis import strategies as st

from encimap.smtpaddress import AddressError, canonical_local_part, parse_path
from tests.opcount import assert_linear

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
ODD = ATEXT + ' .@<>()[]":\\\t,;\r\n\x00\x7f\u00e9'
QTEXT = "".join(chr(c) for c in range(32, 127))  # anything printable, escaped where needed

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,4}[a-z0-9])?", fullmatch=True)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)
params = st.sampled_from(["", " SIZE=10240", " BODY=8BITMIME SMTPUTF8"])
LIMITED = settings(max_examples=200, deadline=None)


class Probe(SMTP):
    """aiosmtpd's own parser, to compare with on the forms both must read alike."""


def aiosmtpd(arg: str) -> tuple[str | None, str | None]:
    server = object.__new__(Probe)
    server.local_part_limit = 0
    return SMTP._getaddr(server, arg)


@LIMITED
@given(dot_atoms, domains, st.text(" ", max_size=2), params)
def test_plain_addresses_read_as_aiosmtpd_reads_them(local, domain, before, rest):
    arg = f"{before}<{local}@{domain}>{rest}"
    address, parameters = parse_path(arg)
    assert address == f"{local}@{domain}"
    assert (address, parameters.split()) == (aiosmtpd(arg)[0], aiosmtpd(arg)[1].split())


@LIMITED
@given(st.text(ODD, max_size=40), st.booleans())
def test_any_argument_parses_or_is_refused_and_output_reparses_to_itself(arg, utf8):
    try:
        address, _rest = parse_path(arg, utf8=utf8)
    except AddressError:
        return
    assert not any(ord(c) < 32 or c == "\x7f" for c in address)
    if address != "<>":
        assert parse_path(f"<{address}>", utf8=utf8) == (address, "")


@LIMITED
@given(st.text(QTEXT, max_size=20), domains)
def test_quoted_local_parts_round_trip(content, domain):
    quoted = '"' + content.replace("\\", "\\\\").replace('"', '\\"') + '"'
    address, _ = parse_path(f"<{quoted}@{domain}>")
    assert address == f"{canonical_local_part(content)}@{domain}"
    assert parse_path(f"<{address}>") == (address, "")


@LIMITED
@given(st.text(ODD, max_size=10), st.sampled_from("\r\n\x00\t\x01\x7f"), st.text(ODD, max_size=10))
def test_control_characters_are_refused_anywhere(before, control, after):
    with pytest.raises(AddressError):
        parse_path(f'<"{before}{control}{after}"@example.test>')
    with pytest.raises(AddressError):
        parse_path(before + control + after)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ('<"alice"@vb.test>', "alice@vb.test"),  # the least quoting (RFC 5321 4.1.2)
        ('<"a b"@x.test>', '"a b"@x.test'),
        ('<"a\\"b"@x.test>', '"a\\"b"@x.test'),
        ('<"a\\b"@x.test>', "ab@x.test"),  # a quoted pair is its character
        ("<@relay.test,@other.test:u@x.test>", "u@x.test"),  # source route dropped
        ("<Postmaster>", "Postmaster"),
        ("<u@[192.0.2.1]>", "u@[192.0.2.1]"),
        ("u@x.test", "u@x.test"),
        ("<>", "<>"),
    ],
)
def test_forms_the_grammar_allows(arg, expected):
    assert parse_path(arg)[0] == expected


@pytest.mark.parametrize(
    "arg",
    [
        '<"x\rSPOOF <ceo@bank.test>"@example.test>',  # the spoof of issue 14
        '<"y\r <hidden-victim@remote.test>"@remote.test>',
        "<a\x00b@x.test>",
        "<a@b.test",
        "<a@-b.test>",
        "<a@b..test>",
        "<a.@b.test>",
        "<a@b.test>x",
        '<"open@x.test>',
        "<a b@x.test>",
        "<x@y>(comment)",
        "Name <a@b.test>",
        "<@relay.test a@b.test>",
    ],
)
def test_forms_refused(arg):
    with pytest.raises(AddressError):
        parse_path(arg)


def test_null_path_only_where_allowed():
    with pytest.raises(AddressError):
        parse_path("<>", null=False)


def test_utf8_only_with_smtputf8():
    with pytest.raises(AddressError):
        parse_path("<j\u00f6rg@b\u00fccher.test>")
    assert parse_path("<j\u00f6rg@b\u00fccher.test>", utf8=True)[0] == "j\u00f6rg@b\u00fccher.test"
    with pytest.raises(AddressError):  # an undecodable byte (surrogate escape) is not UTF-8
        parse_path("<j\udcf6rg@x.test>", utf8=True)


@pytest.mark.parametrize(
    "build",
    [
        lambda n: '<"' + "\\a" * n + '"@x.test>',
        lambda n: '<"' + "\\a" * n,
        lambda n: "<" + "a." * n + "@x.test>",
        lambda n: "<a@" + "a-" * n + ">",
        lambda n: "<a@" + "a." * n,
        lambda n: "<" + "@a," * n + ":a@b>",
        lambda n: "<" + "a" * n + "@" + "b" * n,
        lambda n: '<"' + "a b\\" * n,
    ],
)
def test_cost_is_linear_in_the_input(build):
    assert_linear(build, parse_path, 50)
