"""What an adversarial client must not achieve against the IMAP server, each over real sockets
against the real service and PostgreSQL: freezing the process with one LIST, holding memory or
connections before login, trickling a command forever, and losing its session to a database
outage."""

from __future__ import annotations

import asyncio
import tracemalloc

import pytest

from encimap import config
from encimap.imap import listmatch
from encimap.metrics import REGISTRY
from tests.imap_support import (
    RawClient,
    encrypt_for,
    imap_config,
    login,
    make_box,
    plain_message,
    ports,
    read_fetch_streaming,
    running_imap,
    store,
)
from tests.support import run_cli, write_config_file


@pytest.fixture
def cfg(databases, tls_files):
    return imap_config(databases, tls_files)


class CountingMatcher(listmatch.Matcher):
    total = 0

    def match(self, name: str) -> bool:
        before = self.steps
        try:
            return super().match(name)
        finally:
            CountingMatcher.total += self.steps - before


async def test_a_list_pattern_of_wildcards_costs_steps_linear_in_the_names(
    databases, cfg, tls_ca, tmp_path, monkeypatch
):
    box = await make_box(databases, "listfreeze@example.test", tmp_path)
    port, _ = ports(cfg)
    names = ["a" * 40, "Projects/" + "b" * 40, "Projects/" + "b" * 39 + "X"]
    monkeypatch.setattr(listmatch, "Matcher", CountingMatcher)

    def client_side() -> tuple[list[bytes], list[bytes]]:
        client = login(port, tls_ca, box)
        for name in names:
            assert client.create(name)[0] == "OK"
        # RFC 3501: % does not cross the delimiter: INBOX is the one top-level name ending in X
        frozen = client.list('""', "%" * 45 + "X")[1]
        mixed = client.list('""', "*" + "%b" * 30 + "X")[1]
        client.logout()
        return frozen, mixed

    async with running_imap(cfg):
        frozen, mixed = await asyncio.to_thread(client_side)
    assert frozen == [b'(\\HasNoChildren) "/" INBOX'], frozen
    assert mixed == [b'(\\HasNoChildren) "/" Projects/' + b"b" * 39 + b"X"], mixed
    every_name = sum(len(n) for n in (*names, "INBOX", "Sent", "Drafts", "Trash", "Junk"))
    # one step per pattern character and per name character, per LIST
    assert CountingMatcher.total <= 2 * (every_name + 200), CountingMatcher.total


async def test_a_huge_literal_before_login_is_refused_with_bye(databases, cfg, tls_ca, tmp_path):
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        for announce in (b"{45000000}", b"{45000000+}", b"{8193}"):
            raw = await RawClient.connect(tls_port, tls_ca)
            await raw.send(b"a LOGIN " + announce + b"\r\n")
            reply = await raw.line()
            assert reply.startswith(b"* BYE") and b"Literal size too large" in reply, reply
            assert await raw.line() == b"", "the connection stays open"
            await raw.close()
        # a literal the size of a password is fine
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.send(b"a LOGIN {4}\r\n")
        assert (await raw.line()).startswith(b"+ ")
        await raw.send(b"user {8000}\r\n")
        assert (await raw.line()).startswith(b"+ ")
        await raw.send(b"p" * 8000 + b"\r\n")
        reply = await raw.until("a")
        assert reply[-1].startswith(b"a NO [AUTHENTICATIONFAILED]"), reply
        await raw.close()


async def test_after_login_literals_up_to_the_message_limit(databases, tls_files, tls_ca, tmp_path):
    cfg = imap_config(databases, tls_files, max_literal_size=200_000)
    box = await make_box(databases, "bigliteral@example.test", tmp_path)
    body = encrypt_for(box, plain_message(1, size=60_000))
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await raw.send(b"a APPEND INBOX {%d}\r\n" % len(body))
        assert (await raw.line()).startswith(b"+ ")
        await raw.send(body + b"\r\n")
        reply = await raw.until("a")
        assert reply[-1].startswith(b"a OK [APPENDUID"), reply
        await raw.send(b"b APPEND INBOX {200001}\r\n")
        reply = await raw.until("b")
        assert reply[-1].startswith(b"b BAD [TOOBIG]"), reply
        assert (await raw.command("n", "NOOP"))[-1].startswith(b"n OK")
        await raw.close()


async def _bye_within(raw: RawClient, seconds: float) -> bytes:
    """The next line, which must be a BYE, and then the end of the connection."""
    line = await asyncio.wait_for(raw.reader.readline(), seconds)
    while line.startswith(b"* ") and not line.startswith(b"* BYE"):
        line = await asyncio.wait_for(raw.reader.readline(), seconds)
    assert line.startswith(b"* BYE"), line
    assert await asyncio.wait_for(raw.reader.read(), seconds) == b""
    return line


async def test_login_phase_and_each_command_have_a_total_time(
    databases, tls_files, tls_ca, tmp_path
):
    cfg = imap_config(databases, tls_files, login_timeout=2.5, command_timeout=1.0)
    box = await make_box(databases, "slowloris@example.test", tmp_path)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        # idle before login
        raw = await RawClient.connect(tls_port, tls_ca)
        line = await _bye_within(raw, 10)
        assert b"inactivity" in line, line
        await raw.close()
        # busy before login: NOOPs keep coming, the login deadline still ends it
        raw = await RawClient.connect(tls_port, tls_ca)
        replies = 0
        with pytest.raises(ConnectionError):  # the server closes the connection
            for _ in range(100):
                await raw.command("n", "NOOP")
                replies += 1
                await asyncio.sleep(0.1)
        assert 0 < replies < 100
        await raw.close()
        # after login the login deadline no longer applies ...
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await asyncio.sleep(3)
        assert (await raw.command("n", "NOOP"))[-1].startswith(b"n OK")
        # ... but a command's literal must arrive within command_timeout of its first line
        await raw.send(b"a APPEND INBOX {100}\r\n")
        assert (await raw.line()).startswith(b"+ ")
        await raw.send(b"x" * 10)
        line = await _bye_within(raw, 10)
        assert b"in time" in line, line
        await raw.close()


def test_unauthenticated_sessions_get_the_short_timeout_by_default():
    defaults = config.IMAPConfig()
    assert defaults.login_timeout == 60.0
    assert defaults.idle_timeout >= 1800.0  # RFC 3501 5.4, after login only
    assert defaults.max_literal_before_login == 8192


async def test_database_outage_answers_unavailable_and_keeps_the_session(
    private_cluster, tls_files, tls_ca, tmp_path
):
    databases = private_cluster
    cfg = imap_config(databases, tls_files)
    box = await make_box(databases, "outage@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    _, tls_port = ports(cfg)
    commands = [
        ("f", "FETCH 1 (BODY.PEEK[])"),
        ("s", "STORE 1 +FLAGS (\\Flagged)"),
        ("l", 'LIST "" "*"'),
        ("t", "STATUS INBOX (MESSAGES)"),
        ("x", "SELECT INBOX"),
    ]
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        assert (await raw.command("s0", "SELECT INBOX"))[-1].startswith(b"s0 OK")
        idling = await RawClient.connect(tls_port, tls_ca)
        await idling.login(box)
        await idling.command("s", "SELECT INBOX")
        await idling.send(b"i IDLE\r\n")
        assert (await idling.line()).startswith(b"+ ")
        await asyncio.to_thread(databases.cluster.stop, "fast")
        try:
            for tag, text in commands:
                reply = await raw.command(tag, text)
                assert reply[-1].startswith(f"{tag} NO [UNAVAILABLE]".encode()), (text, reply)
            assert (await raw.command("n", "NOOP"))[-1].startswith(b"n OK")
        finally:
            await asyncio.to_thread(databases.cluster.start)
        for _ in range(50):
            reply = await raw.command("again", "SELECT INBOX")
            if reply[-1].startswith(b"again OK"):
                break
            await asyncio.sleep(0.2)
        assert reply[-1].startswith(b"again OK"), reply
        fetched = await raw.command("f2", "FETCH 1 (UID)")
        assert fetched[-1].startswith(b"f2 OK"), fetched
        await raw.close()
        # the idling session lived through the outage
        await idling.send(b"DONE\r\n")
        reply = await idling.until("i")
        assert reply[-1].startswith(b"i OK"), reply
        await idling.close()


async def test_fetch_responses_are_streamed_not_built_in_memory(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "stream@example.test", tmp_path)
    body = encrypt_for(box, plain_message(1, size=90_000))
    assert len(body) > 100_000
    await store(databases, box, body)
    _, tls_port = ports(cfg)
    repeat = 1000
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await raw.command("s", "SELECT INBOX")
        await raw.command("warm", "FETCH 1 (BODY.PEEK[])")  # the message is cached now
        tracemalloc.start()
        try:
            await raw.send(b"f FETCH 1 (" + b" ".join([b"BODY.PEEK[]"] * repeat) + b")\r\n")
            literals, received = await read_fetch_streaming(raw, "f", body)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await raw.close()
    assert literals == repeat and received > repeat * len(body)
    # The response is over 100 MB; what the process allocated at its peak stays a few MB.
    assert peak < 8 * 1024 * 1024, peak


async def test_repeated_large_metadata_items_are_streamed_too(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "envelope@example.test", tmp_path)
    recipients = ", ".join(f"Recipient {n} <r{n}@example.org>" for n in range(4000))
    plain = plain_message(1).replace(b"To: vault@example.test", f"To: {recipients}".encode())
    await store(databases, box, encrypt_for(box, plain))
    _, tls_port = ports(cfg)
    repeat = 400
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await raw.command("s", "SELECT INBOX")
        tracemalloc.start()
        try:
            await raw.send(b"f FETCH 1 (" + b" ".join([b"ENVELOPE"] * repeat) + b")\r\n")
            received, tail = 0, b""
            while b"\r\nf " not in tail or not tail.endswith(b"\r\n"):
                chunk = await asyncio.wait_for(raw.reader.read(65536), 10)
                assert chunk, "connection closed"
                received += len(chunk)
                tail = (tail + chunk)[-200:]
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        await raw.close()
    assert b"\r\nf OK" in tail, tail
    assert received > repeat * 150_000  # ENVELOPE is about 170 KB
    assert peak < 16 * 1024 * 1024, peak
    assert 0 < REGISTRY.get_sample_value("encimap_imap_output_peak_bytes") < 1024 * 1024


async def test_mailbox_names_and_counts_are_limited(databases, tls_files, tls_ca, tmp_path):
    cfg = imap_config(databases, tls_files, max_mailboxes=12)
    box = await make_box(databases, "names@example.test", tmp_path)
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)

        async def create(name: bytes) -> bytes:
            await raw.send(b"c CREATE {%d+}\r\n%b\r\n" % (len(name), name))
            return (await raw.until("c"))[-1]

        for bad_name in (b"a&b", b"&Jjo", b"&AGE-", "Entwürfe".encode()):
            reply = await create(bad_name)
            assert reply.startswith(b"c NO [CANNOT]") and b"UTF-7" in reply, (bad_name, reply)
        reply = await create(b"x" * 60_000)
        assert reply.startswith(b"c NO [LIMIT]") and b"512 bytes" in reply, reply
        reply = await create(b"/".join([b"d"] * 100))
        assert reply.startswith(b"c NO [LIMIT]") and b"16 levels" in reply, reply
        assert (await create(b"Entw&APw-rfe")).startswith(b"c OK")
        assert (await create(b"d")).startswith(b"c OK")
        assert (await create(b"/".join([b"d"] * 16))).startswith(b"c OK")
        # a rename may not push a child past the depth limit
        reply = (await raw.command("r", "RENAME d a/d"))[-1]
        assert reply.startswith(b"r NO [LIMIT]") and b"16 levels" in reply, reply
        listed = await raw.command("l", 'LIST "" "*"')
        count = sum(  # parents that exist only as a path are listed \Noselect
            1 for line in listed if line.startswith(b"* LIST") and b"\\Noselect" not in line
        )
        for number in range(count, 12):
            assert (await create(b"f%d" % number)).startswith(b"c OK")
        reply = await create(b"one-more")
        assert reply.startswith(b"c NO [LIMIT]") and b"12 mailboxes" in reply, reply
        await raw.close()


async def test_a_search_with_too_many_keys_is_refused_with_a_reason(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "searchkeys@example.test", tmp_path)
    await store(databases, box, encrypt_for(box, plain_message(1)))
    _, tls_port = ports(cfg)
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.login(box)
        await raw.command("s", "SELECT INBOX")
        keys = b" ".join([b"FROM {1+}\r\na"] * 40_000)
        await raw.send(b"q SEARCH " + keys + b"\r\n")
        reply = await raw.until("q")
        assert reply[-1].startswith(b"q NO [LIMIT]") and b"search keys" in reply[-1], reply
        many = " ".join(["FROM sender1"] * 1000)
        reply = await raw.command("k", f"SEARCH {many}")
        assert reply == [b"* SEARCH 1\r\n", reply[-1]] and reply[-1].startswith(b"k OK"), reply
        await raw.close()


async def test_revocation_and_suspension_end_open_sessions_on_every_host(
    databases, cfg, tls_files, tls_ca, tmp_path
):
    revoked = await make_box(databases, "revokeme@example.test", tmp_path)
    suspended = await make_box(databases, "suspendme@example.test", tmp_path)
    other = await make_box(databases, "bystander@example.test", tmp_path)
    second_host = imap_config(databases, tls_files)
    config_file = write_config_file(tmp_path / "c.toml", databases)
    ended_before = (
        REGISTRY.get_sample_value("encimap_imap_sessions_ended_total", {"reason": "revoked"}) or 0
    )
    async with running_imap(cfg), running_imap(second_host):
        sessions = {}
        for name, box, port in (
            ("revoked_here", revoked, ports(cfg)[1]),
            ("revoked_there", revoked, ports(second_host)[1]),
            ("suspended", suspended, ports(cfg)[1]),
            ("other", other, ports(cfg)[1]),
        ):
            raw = await RawClient.connect(port, tls_ca)
            await raw.login(box)
            sessions[name] = raw
        # one of them idles (RFC 2177), the others wait between commands
        idling = sessions["revoked_there"]
        await idling.command("s", "SELECT INBOX")
        await idling.send(b"i IDLE\r\n")
        assert (await idling.line()).startswith(b"+ ")

        result = await asyncio.to_thread(
            run_cli, "credential", "revoke", revoked.username, config_file=config_file
        )
        assert result.returncode == 0, result.stderr
        for name in ("revoked_here", "revoked_there"):
            line = await _bye_within(sessions[name], 10)
            assert b"revoked" in line, (name, line)
        admin = await databases.connect()
        try:
            await admin.execute(
                "UPDATE vaultboxes SET status = 'suspended' WHERE id = $1", suspended.id
            )
        finally:
            await admin.close()
        await _bye_within(sessions["suspended"], 10)
        # the bystander's session is untouched
        assert (await sessions["other"].command("n", "NOOP"))[-1].startswith(b"n OK")
        for raw in sessions.values():
            await raw.close()
    ended = REGISTRY.get_sample_value("encimap_imap_sessions_ended_total", {"reason": "revoked"})
    assert ended == ended_before + 3


async def test_a_password_change_alone_keeps_open_sessions(databases, cfg, tls_ca, tmp_path):
    box = await make_box(databases, "newpassword@example.test", tmp_path)
    async with running_imap(cfg):
        raw = await RawClient.connect(ports(cfg)[1], tls_ca)
        await raw.login(box)
        admin = await databases.connect()
        try:
            await admin.execute(
                "UPDATE imap_app_credentials SET password_hash = password_hash || '' "
                "WHERE username = $1",
                box.username,
            )
            # the NOTIFY went out (the auth cache dropped the user); the session stays
            await asyncio.sleep(0.5)
        finally:
            await admin.close()
        assert (await raw.command("n", "NOOP"))[-1].startswith(b"n OK")
        await raw.close()


async def test_time_per_command_is_measured_for_known_commands_only(
    databases, cfg, tls_ca, tmp_path
):
    box = await make_box(databases, "timed@example.test", tmp_path)
    _, tls_port = ports(cfg)

    def count(command: str) -> float:
        sample = "encimap_imap_command_seconds_count"
        return REGISTRY.get_sample_value(sample, {"command": command}) or 0.0

    before = {name: count(name) for name in ("NOOP", "SELECT", "NOSUCH")}
    async with running_imap(cfg):
        raw = await RawClient.connect(tls_port, tls_ca)
        await raw.command("s0", "SELECT INBOX")  # BAD before login: counted all the same
        await raw.login(box)
        for n in range(3):
            await raw.command(f"n{n}", "NOOP")
        await raw.command("x", "NOSUCH")
        await raw.close()
    assert count("NOOP") - before["NOOP"] == 3
    assert count("SELECT") - before["SELECT"] == 1
    assert count("NOSUCH") == before["NOSUCH"] == 0  # a client cannot add labels
