"""ESEARCH (RFC 4731): SEARCH RETURN (MIN MAX ALL COUNT) answers with one ESEARCH response
instead of the list of every match. The search itself is SEARCH's (commands/search.py)."""

from __future__ import annotations

from encimap.imap import wire
from encimap.imap.parser import ParseError

OPTIONS = ("MIN", "MAX", "ALL", "COUNT")


def check_options(options: list[str]) -> list[str]:
    """The return options, ALL for `RETURN ()` (RFC 4731 3.1); unknown ones are BAD."""
    unknown = [option for option in options if option not in OPTIONS]
    if unknown:
        raise ParseError(f"unsupported SEARCH RETURN option {unknown[0][:20]}")
    return options or ["ALL"]


def response(
    tag: str, numbers: list[int], options: list[str], *, by_uid: bool, partial: str = ""
) -> str:
    """The untagged ESEARCH response (without "* ") for the matching numbers, ascending;
    `partial` is the PARTIAL return data (commands/context.py), before COUNT as Dovecot."""
    parts = [f"ESEARCH (TAG {wire.quoted_or_literal(tag)})"]
    if by_uid:
        parts.append("UID")
    if numbers and "MIN" in options:
        parts.append(f"MIN {numbers[0]}")
    if numbers and "MAX" in options:
        parts.append(f"MAX {numbers[-1]}")
    if numbers and "ALL" in options:
        parts.append(f"ALL {wire.ordered_sequence_set(numbers)}")
    if partial:
        parts.append(partial)
    if "COUNT" in options:
        parts.append(f"COUNT {len(numbers)}")
    return " ".join(parts)
