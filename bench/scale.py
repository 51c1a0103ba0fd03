"""Costs against the size of the data: IMAP at N = 1,000 / 10,000 / 100,000 messages in a
database that also holds 10,000 other vaultboxes, beside Dovecot on the same bytes; IDLE
wake-up of 1,000 and 10,000 sessions; RCPT with and without a quota at 100,000 messages; a
login lookup at 100 and at 100,000 credentials; LMTP intake to one vaultbox against intake
round-robin to 10,000 vaultboxes.

    python -m bench.scale [--sizes 1000,10000,100000] [--rounds 5] [--no-dovecot] [--pause 0]
                          [--idle 1000,10000] [--intake-boxes 10000] [--intake-messages 2000]

One run: a private PostgreSQL cluster; `--others` vaultboxes (three messages each); per N one
vaultbox whose INBOX gets 200 real S/MIME messages through the insert path, copied through SQL up
to N (new UIDs, same bytes); `encimap serve imap` as its own process; a private Dovecot with the
same N messages as a Maildir. Each operation runs in alternating rounds (Dovecot, encimap,
Dovecot, ...) and the medians of `--rounds` (after a warm-up) are printed with their ratio;
`--pause` seconds are waited before each timed operation (Dovecot re-reads a changed Maildir
on its next command otherwise). Plain IMAP on loopback (trusted network, LOGIN allowed).
IDLE: that many sessions IDLE on the smallest INBOX, one message is stored, and the time until
each session read its EXISTS is taken (the clients on uvloop), with the server's RSS. RCPT and
login are the store's lookups (`find_recipient`, `vaultbox_imap_login`) timed in-process.
Intake: `--intake-boxes` + 1 vaultboxes, each with its own certificate, and `encimap serve
intake` (defaults); rounds of `--intake-messages` 10 KB messages over 4 LMTP connections, one
round to a single vaultbox, the next round-robin through the others, alternating `--rounds`
times after a warm-up that delivers once to every address (its rate is shown too: the
intake's first delivery to each, every lookup a cache miss).
"""

from __future__ import annotations

import argparse
import asyncio
import imaplib
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg
import uvloop

from bench.imap import PASSWORD, bench_mailbox, message, serve, serve_imap, stop
from encimap import smime
from encimap.pgcluster import LocalCluster, free_port, prepare_databases
from encimap.store import certificates, logins, mailboxes, messages, recipients
from encimap.store import vaultboxes as store_vaultboxes
from tests import dovecot_support

UNIQUE = 200  # real deliveries per mailbox; the rest are SQL copies of them

_COPY = """
INSERT INTO encrypted_emails
       (vaultbox_id, mailbox_id, uid, message_id, sender, recipient, body, body_sha256,
        encryption_method, size_bytes, flags, internal_date, envelope, bodystructure,
        bodystructure_basic, mime_parts, sent_date, search_headers)
SELECT s.vaultbox_id, s.mailbox_id, g, s.message_id || '.' || g, s.sender, s.recipient, s.body,
       s.body_sha256, s.encryption_method, s.size_bytes, s.flags, s.internal_date, s.envelope,
       s.bodystructure, s.bodystructure_basic, s.mime_parts, s.sent_date, s.search_headers
  FROM generate_series($2::bigint, $3::bigint) g
  JOIN encrypted_emails s ON s.mailbox_id = $1 AND s.uid = 1 + (g - 1) % $4
"""

_OTHERS = """
INSERT INTO vaultboxes (user_id, domain, name, alias)
SELECT gen_random_uuid(), 'other' || (g % 100) || '.test', 'o', 'o' || g
  FROM generate_series(1, $1::int) g;
INSERT INTO encrypted_emails (vaultbox_id, mailbox_id, uid, message_id, sender, recipient,
                              body, size_bytes)
SELECT m.vaultbox_id, m.id, g, 'm', 's', 'r', '\\x00', 1
  FROM mailboxes m JOIN vaultboxes v ON v.id = m.vaultbox_id AND v.alias LIKE 'o%',
       generate_series(1, 3) g
 WHERE m.name = 'INBOX';
UPDATE mailboxes m SET uid_next = 4
  FROM vaultboxes v WHERE v.id = m.vaultbox_id AND v.alias LIKE 'o%' AND m.name = 'INBOX';
"""


async def fill(url: str, sizes: list[int], others: int) -> dict[int, tuple[str, list[bytes]]]:
    """Per N: (IMAP username, the N stored bodies in UID order)."""
    conn = await asyncpg.connect(url)
    made: dict[int, tuple[str, list[bytes]]] = {}
    try:
        await conn.execute(_OTHERS.replace("$1::int", str(others)))
        for size in sizes:
            box, username, pem = await bench_mailbox(conn, f"scale{size}@example.test")
            unique = [
                smime.encrypt_message(message(n, 1000), [pem]).message
                for n in range(min(UNIQUE, size))
            ]
            for body in unique:
                inserted = await messages.insert_message(conn, vaultbox_id=box.id, body=body)
            if size > len(unique):
                await conn.execute(_COPY, inserted.mailbox_id, len(unique) + 1, size, len(unique))
                await conn.execute(
                    "UPDATE mailboxes SET uid_next = $2 + 1 WHERE id = $1",
                    inserted.mailbox_id,
                    size,
                )
            made[size] = (username, [unique[i % len(unique)] for i in range(size)])
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    return made


class Target:
    def __init__(self, name: str, port: int, user: str, password: str) -> None:
        self.name, self.port, self.user, self.password = name, port, user, password

    def login(self) -> imaplib.IMAP4:
        client = imaplib.IMAP4("127.0.0.1", self.port)
        client.login(self.user, self.password)
        return client

    def session(self) -> imaplib.IMAP4:
        client = self.login()
        client.select("INBOX")
        return client


def operations(count: int) -> dict[str, Callable[[Target, imaplib.IMAP4], object]]:
    first_1000 = f"1:{min(1000, count)}"

    def connect(target: Target, _client: imaplib.IMAP4) -> imaplib.IMAP4:
        return target.session()

    def flags(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.uid("FETCH", "1:*", "(UID FLAGS)")
        assert typ == "OK" and len(data) == count, (typ, len(data))

    def unseen(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.uid("SEARCH", "UNSEEN")
        assert typ == "OK" and len(data[0].split()) == count, typ

    def status(target: Target, _client: imaplib.IMAP4) -> imaplib.IMAP4:
        other = target.login()
        started = time.perf_counter()
        typ, data = other.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
        other._bench_elapsed = time.perf_counter() - started  # type: ignore[attr-defined]
        assert typ == "OK" and f"MESSAGES {count}".encode() in data[0], data
        return other

    def search_from(_target: Target, client: imaplib.IMAP4) -> None:
        typ, _data = client.search(None, "FROM", '"sender7@"')
        assert typ == "OK"

    def last_50(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.fetch(
            f"{max(1, count - 49)}:*", "(UID FLAGS RFC822.SIZE ENVELOPE BODYSTRUCTURE)"
        )
        assert typ == "OK" and len(data) >= min(50, count)

    def one_body(_target: Target, client: imaplib.IMAP4) -> None:
        typ, data = client.uid("FETCH", str(count // 2), "BODY.PEEK[]")
        assert typ == "OK" and isinstance(data[0], tuple)

    def store_1000(_target: Target, client: imaplib.IMAP4) -> None:
        typ, _ = client.store(first_1000, "+FLAGS.SILENT", "(\\Flagged)")
        assert typ == "OK"
        typ, _ = client.store(first_1000, "-FLAGS.SILENT", "(\\Flagged)")
        assert typ == "OK"

    return {
        "connect + LOGIN + SELECT": connect,
        "UID FETCH 1:* (UID FLAGS)": flags,
        "UID SEARCH UNSEEN": unseen,
        "STATUS INBOX (MESSAGES UNSEEN UIDNEXT)": status,
        'SEARCH FROM "x"': search_from,
        "FETCH last 50 (ENVELOPE BODYSTRUCTURE ...)": last_50,
        "UID FETCH of one body": one_body,
        "STORE 1,000 +FLAGS then -FLAGS": store_1000,
    }


def measure(
    targets: list[Target], count: int, rounds: int, pause: float
) -> dict[str, dict[str, float]]:
    """{operation: {target: median ms}}, rounds alternating between the targets."""
    clients = {target.name: target.session() for target in targets}
    timings: dict[str, dict[str, list[float]]] = {}
    for name, operation in operations(count).items():
        for attempt in range(rounds + 1):  # the first round is the warm-up
            for target in targets:
                if pause:
                    time.sleep(pause)
                started = time.perf_counter()
                opened = operation(target, clients[target.name])
                elapsed = time.perf_counter() - started
                if isinstance(opened, imaplib.IMAP4):
                    elapsed = getattr(opened, "_bench_elapsed", elapsed)
                    opened.logout()
                if attempt:
                    timings.setdefault(name, {}).setdefault(target.name, []).append(elapsed)
    for client in clients.values():
        client.logout()
    return {
        name: {target: statistics.median(values) * 1000 for target, values in by_target.items()}
        for name, by_target in timings.items()
    }


async def lookups(url: str, size: int, calls: int = 300) -> dict[str, float]:
    """Store-level medians (ms): RCPT of a vaultbox of `size` messages without and with a quota;
    an IMAP login lookup with 100 and with 100,000 credentials in the table."""
    conn = await asyncpg.connect(url)

    async def median(call: Callable[[], object]) -> float:
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            await call()  # type: ignore[misc]
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    try:
        address = [f"scale{size}@example.test"]
        results = {"RCPT, no quota": await median(lambda: recipients.find_recipient(conn, address))}
        await conn.execute(
            """UPDATE vaultboxes SET limits = '{"max_messages": 10000000}'
                WHERE alias = $1""",
            f"scale{size}",
        )
        found = await recipients.find_recipient(conn, address)
        assert found is not None and found.messages >= size, found.messages
        results[f"RCPT, quota, {size:,} messages"] = await median(
            lambda: recipients.find_recipient(conn, address)
        )
        username = await conn.fetchval(
            "SELECT username FROM imap_app_credentials ORDER BY created_at LIMIT 1"
        )
        await conn.execute(
            """INSERT INTO imap_app_credentials (user_id, username, password_hash)
               SELECT gen_random_uuid(), 'filler' || g, 'x' FROM generate_series(1, 97) g"""
        )
        results["login lookup, 100 credentials"] = await median(
            lambda: logins.vaultbox_imap_login(conn, username)
        )
        await conn.execute(
            """INSERT INTO imap_app_credentials (user_id, username, password_hash, revoked_at)
               SELECT gen_random_uuid(), 'more' || g, 'x', CASE WHEN g % 10 = 0 THEN now() END
                 FROM generate_series(1, 99900) g"""
        )
        await conn.execute("ANALYZE imap_app_credentials")
        results["login lookup, 100,000 credentials"] = await median(
            lambda: logins.vaultbox_imap_login(conn, username)
        )
        inbox = await conn.fetchval(
            "SELECT m.id FROM mailboxes m JOIN vaultboxes v ON v.id = m.vaultbox_id "
            "WHERE v.alias = $1 AND m.name = 'INBOX'",
            f"scale{size}",
        )
        results[f"STATUS counters, {size:,} messages"] = await median(
            lambda: mailboxes.counts(conn, inbox)
        )
    finally:
        await conn.close()
    return results


async def idle_wakeup(url: str, port: int, username: str, sessions: int) -> dict[str, float]:
    """`sessions` IMAP sessions IDLE on one INBOX; one message is stored: how long until each
    saw its EXISTS (median, max ms)."""

    async def open_session() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        await reader.readline()
        writer.write(f'a LOGIN "{username}" "{PASSWORD}"\r\nb SELECT INBOX\r\nc IDLE\r\n'.encode())
        while not (await reader.readline()).startswith(b"+ "):
            pass
        return reader, writer

    opened = []
    for start in range(0, sessions, 200):  # logins in batches, as clients reconnect
        opened += await asyncio.gather(
            *(open_session() for _ in range(start, min(sessions, start + 200)))
        )
    conn = await asyncpg.connect(url)
    try:
        vaultbox_id = await conn.fetchval(
            "SELECT vaultbox_id FROM imap_app_credentials WHERE username = $1", username
        )
        body = await conn.fetchval(
            "SELECT body FROM encrypted_emails WHERE vaultbox_id = $1 LIMIT 1", vaultbox_id
        )

        async def seen(reader: asyncio.StreamReader) -> float:
            while not (await reader.readline()).endswith(b"EXISTS\r\n"):
                pass
            return time.perf_counter()

        waiting = [asyncio.ensure_future(seen(reader)) for reader, _ in opened]
        started = time.perf_counter()
        await messages.insert_message(conn, vaultbox_id=vaultbox_id, body=body)
        times = [(at - started) * 1000 for at in await asyncio.gather(*waiting)]
    finally:
        await conn.close()
        for _, writer in opened:
            writer.close()
    return {"median": statistics.median(times), "max": max(times)}


INTAKE_DOMAIN = "intake.test"


async def make_recipients(url: str, count: int) -> list[str]:
    """`count` vaultboxes at INTAKE_DOMAIN, each with its own certificate (EC: quick to make);
    their addresses."""
    conn = await asyncpg.connect(url)
    addresses = []
    try:
        async with conn.transaction():
            for n in range(count):
                alias = f"rcpt{n}"
                box = await store_vaultboxes.create_vaultbox(
                    conn, user_id=uuid.uuid4(), alias=alias, domain=INTAKE_DOMAIN, name=None
                )
                address = f"{alias}@{INTAKE_DOMAIN}"
                await certificates.add_generated_certificate(
                    conn, vaultbox_id=box.id, address=address, ec=True
                )
                addresses.append(address)
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return addresses


async def lmtp_round(port: int, recipients: list[str], sessions: int, size: int) -> float:
    """Deliver one message to each of `recipients` in turn over `sessions` LMTP connections;
    messages per second."""
    body = b"".join(b"%075d\r\n" % n for n in range(size // 77 + 1))
    queue = iter(recipients)

    async def one_session() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def reply() -> bytes:
            while True:
                line = await reader.readline()
                if line[3:4] != b"-":
                    return line

        await reply()
        writer.write(b"LHLO bench.test\r\n")
        await reply()
        for recipient in queue:
            envelope = b"MAIL FROM:<sender@bench.test>\r\nRCPT TO:<%s>\r\nDATA\r\n"
            writer.write(envelope % recipient.encode())
            for _ in range(3):
                line = await reply()
            if not line.startswith(b"354"):
                raise RuntimeError(f"DATA refused: {line!r}")
            writer.write(
                b"Subject: bench\r\nMessage-ID: <%s@bench.test>\r\n\r\n" % uuid.uuid4().hex.encode()
                + body
                + b".\r\n"
            )
            line = await reply()
            if not line.startswith(b"250"):
                raise RuntimeError(f"delivery refused: {line!r}")
        writer.write(b"QUIT\r\n")
        writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one_session() for _ in range(sessions)))
    return len(recipients) / (time.perf_counter() - started)


def intake_rates(
    base: Path, urls: tuple[str, str], boxes: int, messages: int, rounds: int
) -> dict[str, float]:
    """LMTP delivery rate to one vaultbox and round-robin to `boxes` different ones, in
    alternating rounds of `messages` (medians, messages per second)."""
    addresses = asyncio.run(make_recipients(urls[1], boxes + 1))
    single, spread = addresses[0], addresses[1:]
    port = free_port()
    server = serve(
        base / "intake.toml",
        "intake",
        port,
        f'[database]\nmotorical_url = "{urls[0]}"\nencimap_url = "{urls[1]}"\n'
        f'[intake]\nlisten = "127.0.0.1:{port}"\nhostname = "bench.test"\n'
        f'[metrics]\nintake = ""\n[log]\nlevel = "warning"\n',
    )
    try:
        uvloop.run(lmtp_round(port, [single] * 200, 4, 10_240))  # warm-up
        # every address once: the intake's first delivery to each (its caches fill up)
        first = uvloop.run(lmtp_round(port, spread, 4, 10_240))
        one: list[float] = []
        many: list[float] = []
        cursor = 0
        for _ in range(rounds):
            one.append(uvloop.run(lmtp_round(port, [single] * messages, 4, 10_240)))
            chosen = [spread[(cursor + n) % len(spread)] for n in range(messages)]
            cursor += messages
            many.append(uvloop.run(lmtp_round(port, chosen, 4, 10_240)))
    finally:
        stop(server)
    return {"one": statistics.median(one), "many": statistics.median(many), "first": first}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--others", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--pause", type=float, default=0.0)
    parser.add_argument("--no-dovecot", action="store_true")
    parser.add_argument("--idle", default="1000", help="IDLE session counts, e.g. 1000,10000")
    parser.add_argument(
        "--intake-boxes",
        type=int,
        default=10_000,
        help="vaultboxes the round-robin intake rounds deliver to (0: none)",
    )
    parser.add_argument("--intake-messages", type=int, default=2000,
                        help="messages per intake round")  # fmt: skip
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    use_dovecot = not args.no_dovecot
    if use_dovecot and (reason := dovecot_support.available()):
        print(f"without Dovecot: {reason}", file=sys.stderr)
        use_dovecot = False
    base = Path(tempfile.mkdtemp(prefix="encimap-scale-"))
    cluster = LocalCluster(base / "pg")
    cluster.start()
    server = None
    try:
        _, url = asyncio.run(prepare_databases(cluster, "motorical_db", "motorical_encrypted_imap"))
        started = time.perf_counter()
        made = asyncio.run(fill(url, sizes, args.others))
        print(
            f"filled {sizes} + {args.others} other vaultboxes"
            f" in {time.perf_counter() - started:.0f} s"
        )
        port = free_port()
        server = serve_imap(
            base,
            cluster,
            port,
            "max_connections_per_user = 20000\nmax_connections = 20000\n"
            "max_connections_per_ip = 20000\nmax_unauthenticated = 1000\n",
        )
        tables = {}
        for size in sizes:
            username, bodies = made[size]
            targets = [Target("encimap", port, username, PASSWORD)]
            dovecot = None
            if use_dovecot:
                dovecot = dovecot_support.Dovecot(bodies)
                dovecot.start()
                targets.insert(0, Target("Dovecot", dovecot.port, dovecot.user, dovecot.password))
            try:
                tables[size] = measure(targets, size, args.rounds, args.pause)
            finally:
                if dovecot is not None:
                    dovecot.stop()
        wakeups = {}
        for count in [int(n) for n in args.idle.split(",") if n]:
            before = rss_mb(server.pid)
            # The clients on uvloop, as the server: the client's own loop is not what is measured.
            result = uvloop.run(idle_wakeup(url, port, made[min(sizes)][0], count))
            result["server RSS MB"] = rss_mb(server.pid)
            result["RSS per session KB"] = (result["server RSS MB"] - before) * 1024 / count
            wakeups[count] = result
        stored = asyncio.run(lookups(url, max(sizes)))
        stop(server)
        server = None
        intake = None
        if args.intake_boxes:
            intake = intake_rates(
                base, (cluster.url("motorical_db"), url), args.intake_boxes,
                args.intake_messages, args.rounds,
            )  # fmt: skip
    finally:
        if server is not None:
            stop(server)
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"\nIMAP, medians of {args.rounds} alternating rounds after a warm-up; ms")
    header = "".join(f" | N = {size:,}" for size in sizes)
    print(f"| operation{header} |")
    for name in tables[sizes[0]]:
        cells = []
        for size in sizes:
            row = tables[size][name]
            ours = row["encimap"]
            if "Dovecot" in row:
                cells.append(f"{ours:.1f} / {row['Dovecot']:.1f} ({ours / row['Dovecot']:.2f}x)")
            else:
                cells.append(f"{ours:.1f}")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nIDLE: new mail seen by every session, ms; server RSS while they IDLE")
    for count, result in wakeups.items():
        print(
            f"| {count:,} sessions | median {result['median']:.0f} | max {result['max']:.0f}"
            f" | RSS {result['server RSS MB']:.0f} MB"
            f" ({result['RSS per session KB']:.0f} KB per session) |"
        )
    print("\nstore-level lookups, median ms")
    for name, value in stored.items():
        print(f"| {name} | {value:.3f} |")
    if intake is not None:
        print(
            f"\nLMTP intake, 10 KB messages over 4 sessions, medians of {args.rounds} alternating"
            f" rounds of {args.intake_messages}: one vaultbox {intake['one']:.0f} msg/s,"
            f" round-robin to {args.intake_boxes:,} vaultboxes {intake['many']:.0f} msg/s"
            f" ({intake['many'] / intake['one']:.2f}x; target >= 0.9x); the first delivery to"
            f" each of them, before the rounds: {intake['first']:.0f} msg/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
