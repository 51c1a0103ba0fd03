"""Every reply the intake sends: SMTP code, RFC 3463 enhanced status code, text."""

from __future__ import annotations

from dataclasses import dataclass

from encimap import smtpdata


@dataclass(frozen=True)
class Reply:
    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500

    def with_text(self, text: str) -> Reply:
        return Reply(self.code, self.enhanced, text)


SENDER_OK = Reply(250, "2.1.0", "Sender ok")
RECIPIENT_OK = Reply(250, "2.1.5", "Recipient ok")
DELIVERED = Reply(250, "2.0.0", "Delivered encrypted")
UNKNOWN_RECIPIENT = Reply(550, "5.1.1", "No such mailbox")
MAILBOX_DISABLED = Reply(550, "5.2.1", "Mailbox disabled")
OVER_QUOTA = Reply(452, "4.2.2", "Mailbox full")
NO_CERTIFICATE_TEMPFAIL = Reply(451, "4.7.1", "Mailbox has no usable encryption key")
NO_CERTIFICATE_REJECT = Reply(550, "5.7.1", "Mailbox has no usable encryption key")
BAD_ADDRESS = Reply(501, "5.1.3", "Bad recipient address syntax")
TOO_MANY_RECIPIENTS = Reply(452, "4.5.3", "Too many recipients")
TEMPORARY_FAILURE = Reply(451, "4.3.0", "Temporary failure, try again later")
MESSAGE_TOO_BIG = Reply(552, "5.3.4", "Message too big")
LINE_TOO_LONG = Reply(500, "5.5.2", "Line too long (RFC 5321 4.5.3.1.6)")
SHUTTING_DOWN = Reply(421, "4.3.2", "Service shutting down")
TOO_MANY_CONNECTIONS = Reply(421, "4.7.0", "Too many connections, try again later")
_code, _enhanced, _text = smtpdata.INSUFFICIENT_STORAGE.split(" ", 2)
INSUFFICIENT_STORAGE = Reply(int(_code), _enhanced, _text)  # the DATA budget is spent

# aiosmtpd's own replies for limits it enforces, in the form of the rest of ours.
AIOSMTPD_REWRITES: dict[str, Reply] = {
    "552 Error: Too much mail data": MESSAGE_TOO_BIG,
    "552 Error: message size exceeds fixed maximum message size": MESSAGE_TOO_BIG,
    "500 Line too long (see RFC5321 4.5.3.1.6)": LINE_TOO_LONG,
    smtpdata.INSUFFICIENT_STORAGE: INSUFFICIENT_STORAGE,
}
# Replies aiosmtpd sends once at the end of DATA; LMTP needs one per accepted recipient.
DATA_PHASE_REPLIES = frozenset({MESSAGE_TOO_BIG, LINE_TOO_LONG, INSUFFICIENT_STORAGE})

# RFC 2033 section 5: an LMTP server implements PIPELINING and ENHANCEDSTATUSCODES; the intake
# announces both in SMTP mode too.
EXTENSIONS = ("PIPELINING", "ENHANCEDSTATUSCODES")
