"""RFC 3501 7.4.2 ENVELOPE of a header block."""

from __future__ import annotations

from encimap.mimeinfo.addresses import Address, address_list, parse_addresses
from encimap.mimeinfo.headers import Headers
from encimap.mimeinfo.strings import human_string


def envelope(headers: Headers) -> str:
    """RFC 3501 7.4.2 ENVELOPE; Sender and Reply-To default to From."""

    def addresses(name: str) -> list[Address] | None:
        # every field of the name, as one list (Dovecot: repeated To, Cc, ... add up)
        values = headers.all(name)
        return parse_addresses(", ".join(values)) if values else None

    def defaulting_to_from(name: str) -> str:
        found = addresses(name)
        return address_list(found) if found else from_text

    subject = headers.first("subject")
    from_text = address_list(addresses("from"))
    fields = [
        headers.nstring("date"),
        "NIL" if subject is None else human_string(subject, folded="subject" in headers.folded),
        from_text,
        defaulting_to_from("sender"),
        defaulting_to_from("reply-to"),
        address_list(addresses("to")),
        address_list(addresses("cc")),
        address_list(addresses("bcc")),
        headers.nstring("in-reply-to"),
        headers.nstring("message-id"),
    ]
    return "(" + " ".join(fields) + ")"
