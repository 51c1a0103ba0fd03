"""The bytes of client data one process holds for all its sessions, in all.

Each command's data is bounded on its own (a literal by `imap.max_literal_size`, a DATA by
`max_message_size`); a budget bounds their sum over every session of the process:
`imap.max_literal_bytes_in_flight` (a literal's size is reserved when it is announced, before
"+") and `intake`/`submission.max_data_bytes_in_flight` (a DATA's bytes as they arrive, see
encimap.smtpdata). A session gives its reservation back when the command has been answered or
has ended in any other way (refused, aborted, the client gone)."""

from __future__ import annotations

from encimap.metrics import BYTES_IN_FLIGHT


class ByteBudget:
    def __init__(self, limit: int, service: str) -> None:
        """`limit`: bytes in all; 0 = no limit (reservations are still counted). What is held
        shows in encimap_bytes_in_flight{service}."""
        self.limit = limit
        self.held = 0
        self._shown = BYTES_IN_FLIGHT.labels(service)

    def reserve(self, size: int) -> bool:
        """Take `size` bytes if they fit: whether they did."""
        if self.limit and self.held + size > self.limit:
            return False
        self.held += size
        self._shown.inc(size)
        return True

    def release(self, size: int) -> None:
        self.held -= size
        self._shown.dec(size)
