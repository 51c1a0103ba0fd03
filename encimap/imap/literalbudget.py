"""The literal bytes one IMAP process holds, in all (`imap.max_literal_bytes_in_flight`).

Each command's literals are bounded on their own (`imap.max_literal_size`); this bounds their
sum over every session of the process. A session reserves a literal's size when the literal is
announced, before it answers "+", and gives its reservation back when the command has been
answered or has ended in any other way (refused, aborted, the client gone)."""

from __future__ import annotations


class LiteralBudget:
    def __init__(self, limit: int) -> None:
        """`limit`: bytes in all; 0 = no limit (reservations are still counted)."""
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> bool:
        """Take `size` bytes if they fit: whether they did."""
        if self.limit and self.held + size > self.limit:
            return False
        self.held += size
        return True

    def release(self, size: int) -> None:
        self.held -= size
