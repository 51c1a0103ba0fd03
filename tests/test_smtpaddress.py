"""The MAIL/RCPT address fast path answers exactly as aiosmtpd's parser does."""

from __future__ import annotations

from aiosmtpd.smtp import SMTP
from hypothesis import given
from hypothesis import strategies as st

from encimap.smtpaddress import FastAddressParsing

ATEXT = "abcXYZ019!#$%&'*+/=?^_`{|}~-"
ODD = ATEXT + ' .@<>()[]":\\\t,;\u00e9'


class Probe(FastAddressParsing):
    pass


def probe(local_part_limit: int) -> Probe:
    server = object.__new__(Probe)  # _getaddr needs no connection, loop or handler
    server.local_part_limit = local_part_limit
    return server


def slow(server: Probe, arg: str) -> tuple[str | None, str | None]:
    return SMTP._getaddr(server, arg)


atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
labels = st.text("abc09-", min_size=1, max_size=6)
domains = st.lists(labels, min_size=1, max_size=3).map(".".join)
blanks = st.text(" \t", max_size=2)
params = st.sampled_from(["", "SIZE=10240", "BODY=8BITMIME SMTPUTF8", "x", "(comment) SIZE=1"])


@given(dot_atoms, domains, blanks, blanks, params, st.sampled_from([0, 5, 64]))
def test_plain_addresses_parse_as_aiosmtpd_parses_them(local, domain, before, after, rest, limit):
    arg = f"{before}<{local}@{domain}>{after}{rest}"
    server = probe(limit)
    assert server._getaddr(arg) == slow(server, arg)


def outcome(parse, arg: str) -> object:
    try:
        return parse(arg)
    except Exception as exc:  # the email parser raises on some inputs (e.g. a lone quote)
        return type(exc)


@given(st.text(ODD, max_size=30), st.sampled_from([0, 5, 64]))
def test_any_argument_parses_as_aiosmtpd_parses_it(arg, limit):
    server = probe(limit)
    assert outcome(server._getaddr, arg) == outcome(lambda a: slow(server, a), arg)


def test_the_fast_path_is_taken_for_plain_addresses(monkeypatch):
    def refuse(self, arg):
        raise AssertionError(f"parser called for {arg!r}")

    monkeypatch.setattr(SMTP, "_getaddr", refuse)
    assert probe(64)._getaddr("<a.b+c@mx.example.org> SIZE=1") == (
        "a.b+c@mx.example.org",
        "SIZE=1",
    )
