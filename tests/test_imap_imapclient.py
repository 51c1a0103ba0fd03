"""A real client library we did not write, with strict response parsers: IMAPClient walks
through the extensions sync clients use (ID, NAMESPACE, ENABLE CONDSTORE/QRESYNC, STATUS with
HIGHESTMODSEQ and SIZE, FETCH CHANGEDSINCE, SEARCH MODSEQ, SORT, THREAD, QUOTA, MULTIAPPEND
with APPENDUID, MOVE, UID EXPUNGE, IDLE) over STARTTLS and implicit TLS, and what its parsers
return must be what the server holds."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from tests.imap_support import (
    client_context,
    encrypt_for,
    imap_config,
    make_box,
    plain_message,
    ports,
    running_imap,
    store,
    store_mail,
)
from tests.intake_support import openssl_decrypt
from tests.support import set_limits

imapclient = pytest.importorskip("imapclient", reason="IMAPClient is not installed")

COUNT = 6


def _connect(port: int, context: ssl.SSLContext, *, implicit: bool, box):
    if implicit:
        client = imapclient.IMAPClient("localhost", port, ssl=True, ssl_context=context, timeout=10)
    else:
        client = imapclient.IMAPClient("localhost", port, ssl=False, timeout=10)
        client.starttls(context)
    client.login(box.username, box.password)
    return client


def _reply(number: int, parent: int) -> bytes:
    return plain_message(number).replace(
        b"\r\n\r\n",
        f"\r\nIn-Reply-To: <m{parent}@example.org>\r\nReferences: <m{parent}@example.org>"
        f"\r\n\r\n".encode(),
        1,
    )


def _walk(starttls_port: int, tls_port: int, context: ssl.SSLContext, box) -> dict:
    seen: dict = {}
    client = _connect(starttls_port, context, implicit=False, box=box)
    try:
        caps = client.capabilities()
        for name in (b"CONDSTORE", b"QRESYNC", b"ESEARCH", b"SORT", b"QUOTA", b"MOVE"):
            assert name in caps, caps
        seen["id"] = client.id_({"name": "imapclient", "version": imapclient.__version__})
        seen["namespace"] = client.namespace()
        seen["enabled"] = client.enable("CONDSTORE", "QRESYNC")
        seen["status"] = client.folder_status(
            "INBOX", ["MESSAGES", "UIDNEXT", "UIDVALIDITY", "HIGHESTMODSEQ", "SIZE", "UNSEEN"]
        )
        selected = client.select_folder("INBOX")
        seen["select"] = selected
        modseq = selected[b"HIGHESTMODSEQ"]
        seen["store"] = client.add_flags([2, 4], [b"\\Flagged", b"$Important"])
        everything = list(range(1, COUNT + 1))
        seen["changed"] = client.fetch(everything, ["FLAGS", "MODSEQ"], [f"CHANGEDSINCE {modseq}"])
        seen["modseq_search"] = client.search(["MODSEQ", modseq + 1])
        seen["flag_search"] = client.search(["FLAGGED"])
        seen["sort"] = client.sort(["REVERSE", "ARRIVAL"])
        seen["thread"] = client.thread("REFERENCES")
        seen["ordered"] = client.thread("ORDEREDSUBJECT")
        seen["quota_root"] = client.get_quota_root("INBOX")
        seen["append"] = client.multiappend(
            "INBOX",
            [
                {"msg": plain_message(50), "flags": [b"\\Seen"]},
                {"msg": plain_message(51), "flags": [b"$Label1"]},
            ],
        )
        seen["after_append"] = client.fetch(list(range(1, COUNT + 3)), ["FLAGS", "RFC822.SIZE"])
        client.create_folder("Archive")
        seen["move"] = client.move([1], "Archive")
        client.add_flags([3], [b"\\Deleted"])
        seen["uid_expunge"] = client.uid_expunge([3])
        seen["inbox_left"] = client.search()
        seen["archive_status"] = client.folder_status("Archive", ["MESSAGES"])
        body = client.fetch([5], ["BODY.PEEK[]", "ENVELOPE", "BODYSTRUCTURE"])[5]
        seen["body"] = body
    finally:
        client.logout()

    # IDLE over implicit TLS: another session's flag change and a new message arrive
    idler = _connect(tls_port, context, implicit=True, box=box)
    other = _connect(starttls_port, context, implicit=False, box=box)
    try:
        idler.select_folder("INBOX")
        other.select_folder("INBOX")
        idler.idle()
        other.add_flags([6], [b"\\Answered"])
        events = []
        for _ in range(5):
            events += idler.idle_check(timeout=5)
            if any(b"FETCH" in event for event in events):
                break
        idler.idle_done()
        seen["idle"] = events
    finally:
        other.logout()
        idler.logout()
    return seen


async def test_imapclient_parses_every_reply_of_a_sync_walk_through(
    databases, tls_files, tls_ca, tmp_path
):
    box = await make_box(databases, "imapclient@example.test", tmp_path)
    stored = await store_mail(databases, box, COUNT - 2)
    stored.append(encrypt_for(box, _reply(4, 0)))
    stored.append(encrypt_for(box, _reply(5, 4)))
    for body in stored[-2:]:
        await store(databases, box, body)
    await set_limits(databases, box.id, {"max_messages": 100, "max_bytes": 1_048_576})
    cfg = imap_config(databases, tls_files)
    starttls_port, tls_port = ports(cfg)
    context = client_context(tls_ca)
    async with running_imap(cfg):
        seen = await asyncio.to_thread(_walk, starttls_port, tls_port, context, box)

    server_id = seen["id"][0]
    assert dict(zip(server_id[::2], server_id[1::2], strict=True))[b"name"] == b"encimap"
    personal = seen["namespace"].personal
    assert personal and personal[0][0] == ""
    assert set(seen["enabled"]) == {b"CONDSTORE", b"QRESYNC"}
    status = seen["status"]
    assert status[b"MESSAGES"] == COUNT and status[b"UNSEEN"] == COUNT
    assert status[b"UIDNEXT"] == COUNT + 1
    assert status[b"SIZE"] == sum(len(body) for body in stored)
    selected = seen["select"]
    assert selected[b"EXISTS"] == COUNT
    assert selected[b"UIDVALIDITY"] == status[b"UIDVALIDITY"]
    assert selected[b"HIGHESTMODSEQ"] == status[b"HIGHESTMODSEQ"]
    assert b"\\*" in selected[b"PERMANENTFLAGS"]

    # STORE answers the new flags (this session holds \Recent); CHANGEDSINCE and SEARCH
    # MODSEQ find just those two
    assert {uid: set(flags) for uid, flags in seen["store"].items()} == {
        2: {b"\\Flagged", b"$Important", b"\\Recent"},
        4: {b"\\Flagged", b"$Important", b"\\Recent"},
    }
    changed = seen["changed"]
    assert sorted(changed) == [2, 4]
    assert all(item[b"MODSEQ"][0] > selected[b"HIGHESTMODSEQ"] for item in changed.values())
    assert sorted(seen["modseq_search"]) == [2, 4]
    assert seen["modseq_search"].modseq == max(item[b"MODSEQ"][0] for item in changed.values())
    assert sorted(seen["flag_search"]) == [2, 4]
    assert seen["sort"] == [6, 5, 4, 3, 2, 1]
    # m5 replies to m4, which replies to m0; the other messages share only the placeholder
    # of their hidden Subject, which gathers nothing into a thread
    assert seen["thread"] == ((1, 5, 6), (2,), (3,), (4,))
    assert seen["ordered"] == ((1,), (2,), (3,), (4,), (5,), (6,))

    roots, quotas = seen["quota_root"]
    assert roots.mailbox == "INBOX" and roots.quota_roots
    assert {(quota.resource, quota.usage, quota.limit) for quota in quotas} == {
        ("STORAGE", (sum(len(body) for body in stored) + 1023) // 1024, 1024),
        ("MESSAGE", COUNT, 100),
    }

    # MULTIAPPEND: one APPENDUID for both, each stored with its flags
    typ, (text,) = seen["append"]
    assert typ == "OK" and text.startswith(
        f"[APPENDUID {selected[b'UIDVALIDITY']} {COUNT + 1}:{COUNT + 2}]".encode()
    ), seen["append"]
    after = seen["after_append"]
    assert sorted(after) == list(range(1, COUNT + 3))
    assert set(after[COUNT + 1][b"FLAGS"]) == {b"\\Seen", b"\\Recent"}
    assert set(after[COUNT + 2][b"FLAGS"]) == {b"$Label1", b"\\Recent"}

    assert seen["inbox_left"] == [2, 4, 5, 6, COUNT + 1, COUNT + 2]
    assert seen["archive_status"][b"MESSAGES"] == 1
    body = seen["body"]
    assert body[b"BODY[]"] == stored[4]
    assert b"line of text 4" in openssl_decrypt(body[b"BODY[]"], box.key_path)
    envelope = body[b"ENVELOPE"]
    assert envelope.message_id == b"<m4@example.org>"
    assert envelope.in_reply_to == b"<m0@example.org>"
    assert envelope.from_[0].mailbox == b"sender4" and envelope.from_[0].host == b"example.org"
    assert body[b"BODYSTRUCTURE"][0].lower() == b"application"

    idle = seen["idle"]
    fetches = [
        dict(zip(event[2][::2], event[2][1::2], strict=True))
        for event in idle
        if event[1] == b"FETCH"
    ]
    assert any(b"\\Answered" in item[b"FLAGS"] for item in fetches), idle
