"""LIST/LSUB pattern matching (RFC 3501 6.3.8) in time linear in the name.

`*` matches any run of characters, `%` any run without the hierarchy delimiter. A regular
expression with one `.*` per wildcard backtracks: `%%%%...X` against a long name takes
exponential time. Here a pattern becomes an NFA whose state set is one integer bitset
(Shift-And): each character of a name costs five integer operations, whatever the pattern
holds. Runs of wildcards collapse first (`%%` is `%`; `*` next to `%` is `*`), so a pattern
has at most two states per literal character, and a pattern that needs more characters than
a name has is refused without stepping: the bitsets that are stepped are never wider than
about twice the name (a few machine words for names within `imap.max_mailbox_name_length`).

The number of characters stepped and tokens compiled is counted in `Matcher.steps`, so tests
can assert the cost on operation counts rather than on the clock.
"""

from __future__ import annotations

_STAR, _PERCENT = "*", "%"


def tokens(pattern: str) -> list[str]:
    """The pattern's characters with every run of wildcards collapsed to one."""
    out: list[str] = []
    for char in pattern:
        if char in (_STAR, _PERCENT) and out and out[-1] in (_STAR, _PERCENT):
            if char == _STAR:
                out[-1] = _STAR
            continue
        out.append(char)
    return out


class Matcher:
    """One compiled LIST pattern (reference already applied)."""

    def __init__(self, pattern: str, delimiter: str = "/") -> None:
        self.delimiter = delimiter
        toks = tokens(pattern)
        self.steps = len(pattern)
        self.length = len(toks)
        self.min_length = sum(1 for t in toks if t not in (_STAR, _PERCENT))
        self._literal: dict[str, int] = {}
        self._star = 0
        percent = 0
        # RFC 3501 5.1: INBOX is case-insensitive, also as the head of a pattern.
        folded = 5 if pattern[:5].upper() == "INBOX" else 0
        for index, token in enumerate(toks):
            bit = 1 << index
            if token == _STAR:
                self._star |= bit
            elif token == _PERCENT:
                percent |= bit
            else:
                chars = {token, token.lower(), token.upper()} if index < folded else {token}
                for char in chars:
                    self._literal[char] = self._literal.get(char, 0) | bit
        self._wild = self._star | percent
        self._accept = 1 << self.length
        self._start = self._close(1)

    def _close(self, state: int) -> int:
        # A wildcard may match nothing. Wildcards are never adjacent, so one shift suffices.
        return state | ((state & self._wild) << 1)

    def match(self, name: str) -> bool:
        if len(name) < self.min_length:
            self.steps += 1
            return False
        state = self._start
        literal, star, delimiter = self._literal, self._star, self.delimiter
        wild = self._wild
        for char in name:
            self.steps += 1
            stay = state & star if char == delimiter else state & wild
            state = ((state & literal.get(char, 0)) << 1) | stay
            state |= (state & wild) << 1
            if not state:
                return False
        return bool(state & self._accept)
