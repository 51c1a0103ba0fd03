"""The hourly sending limit is one count in PostgreSQL shared by every submission process."""

from __future__ import annotations

import asyncio
import re
import time

import asyncpg
import pytest

from encimap.store import sending
from tests.submission_helpers import login, message, sink, starttls_port, submission
from tests.support import bytes_in_flight, make_config, make_motorblock

USER, PASSWORD, DOMAIN, LIMIT = "mb-limited", "limited-pw", "limited.test", 5
SENDER = f"news@{DOMAIN}"


@pytest.fixture(scope="module")
def motorblock(databases):
    return asyncio.run(
        make_motorblock(
            databases, username=USER, password=PASSWORD, domain=DOMAIN, rate_limit=LIMIT
        )
    )


def rcpt_codes(port: int, tls_ca, recipients: list[str]) -> list[tuple[int, bytes]]:
    """One transaction: the RCPT replies, then DATA if any recipient was accepted."""
    with login(port, tls_ca, USER, PASSWORD) as client:
        client.docmd("MAIL", f"FROM:<{SENDER}>")
        replies = [client.docmd("RCPT", f"TO:<{r}>") for r in recipients]
        accepted = [r for r, reply in zip(recipients, replies, strict=True) if reply[0] == 250]
        if accepted:
            assert client.data(message(SENDER, accepted))[0] == 250
        return replies


async def test_sixth_recipient_in_the_hour_is_refused_across_two_instances(
    databases, tls_files, motorblock, tls_ca
):
    with sink() as (controller, handler):
        cfg = make_config(
            databases,
            tls_files,
            submission={"listen": "127.0.0.1:0", "relay": f"127.0.0.1:{controller.port}"},
        )
        async with submission(cfg) as first, submission(cfg) as second:
            a, b = starttls_port(first), starttls_port(second)
            three = await asyncio.to_thread(
                rcpt_codes, a, tls_ca, ["r1@x.test", "r2@x.test", "r3@x.test"]
            )
            two = await asyncio.to_thread(rcpt_codes, b, tls_ca, ["r4@x.test", "r5@x.test"])
            assert [code for code, _ in three + two] == [250] * 5
            [(code_a, text_a)] = await asyncio.to_thread(rcpt_codes, a, tls_ca, ["r6@x.test"])
            [(code_b, _)] = await asyncio.to_thread(rcpt_codes, b, tls_ca, ["r6@x.test"])
            assert (code_a, code_b) == (451, 451)
            assert text_a.startswith(b"4.7.0")
            resets = re.search(rb"try again after (\d{4}-\d\d-\d\d \d\d:00:00) UTC", text_a)
            assert resets, text_a

            # The next hour: move the counted window into the past, as time would.
            conn = await databases.connect()
            try:
                await conn.execute(
                    "UPDATE send_counters SET window_start = window_start - interval '1 hour'"
                )
                [(code, _)] = await asyncio.to_thread(rcpt_codes, b, tls_ca, ["r7@x.test"])
                assert code == 250
                assert await sending.sent_in_window(conn, f"motorblock:{motorblock.id}") == 1
            finally:
                await conn.close()
        assert sum(len(m.rcpt_tos) for m in handler.messages) == 6


async def test_concurrent_reservations_never_exceed_the_limit(databases):
    pools = [
        await asyncpg.create_pool(databases.encimap_url, min_size=1, max_size=5) for _ in range(2)
    ]
    try:
        results = await asyncio.gather(
            *(sending.reserve(pools[i % 2], "test:concurrent", 1, LIMIT) for i in range(20))
        )
        assert sum(q.granted for q in results) == LIMIT
        granted = next(q for q in results if q.granted)
        await sending.release(pools[0], "test:concurrent", granted.window_start, 2)
        assert await sending.sent_in_window(pools[0], "test:concurrent") == LIMIT - 2
        assert (await sending.reserve(pools[1], "test:concurrent", 2, LIMIT)).granted
        assert not (await sending.reserve(pools[1], "test:concurrent", 1, LIMIT)).granted
    finally:
        for pool in pools:
            await pool.close()


async def test_auth_role_may_use_the_counter(databases):
    conn = await databases.connect()
    try:
        await conn.execute("SET ROLE encimap_auth")
        quota = await sending.reserve(conn, "test:role", 1, 1)
        assert quota.granted and quota.resets_at > quota.window_start
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM send_counters")
    finally:
        await conn.close()


BUDGET_USER, BUDGET_DOMAIN, BUDGET = "mb-budget", "budget.test", 200_000


async def test_a_data_over_the_process_budget_is_452_and_not_a_client_error(
    databases, tls_files, tls_ca
):
    """`submission.max_data_bytes_in_flight`: a DATA that does not fit next to one being
    received is answered 452 4.3.1 and not relayed, without counting towards max_errors (1
    here); once the other DATA has ended, its bytes are given back and the retry is relayed."""
    await make_motorblock(databases, username=BUDGET_USER, password=PASSWORD, domain=BUDGET_DOMAIN)
    sender = f"news@{BUDGET_DOMAIN}"
    line = "x" * 98 + "\r\n"
    first_data = message(sender, ["r1@x.test"], body=line * 1500)  # 150 000 bytes and more
    second_data = message(sender, ["r2@x.test"], body=line * 1000)

    def sessions(port: int) -> tuple[tuple[int, bytes], ...]:
        with (
            login(port, tls_ca, BUDGET_USER, PASSWORD) as first,
            login(port, tls_ca, BUDGET_USER, PASSWORD) as second,
        ):
            first.docmd("MAIL", f"FROM:<{sender}>")
            first.docmd("RCPT", "TO:<r1@x.test>")
            assert first.docmd("DATA")[0] == 354
            first.send(first_data[:120_000])  # held, no final dot yet
            for _ in range(1000):  # until the service has read (and holds) all of it
                if bytes_in_flight("submission") >= held_before + 120_000:
                    break
                time.sleep(0.01)
            second.docmd("MAIL", f"FROM:<{sender}>")
            second.docmd("RCPT", "TO:<r2@x.test>")
            refused = second.data(second_data)
            after = second.noop()  # max_errors = 1 would have closed the session
            first.send(first_data[120_000:] + b".\r\n")
            finished = first.getreply()
            second.docmd("MAIL", f"FROM:<{sender}>")
            second.docmd("RCPT", "TO:<r2@x.test>")
            return refused, after, finished, second.data(second_data)

    held_before = bytes_in_flight("submission")
    with sink() as (controller, handler):
        cfg = make_config(
            databases,
            tls_files,
            submission={
                "listen": "127.0.0.1:0",
                "relay": f"127.0.0.1:{controller.port}",
                "max_message_size": BUDGET,
                "max_data_bytes_in_flight": BUDGET,
                "max_errors": 1,
            },
        )
        async with submission(cfg) as service:
            refused, after, finished, retried = await asyncio.to_thread(
                sessions, starttls_port(service)
            )
    assert refused == (452, b"4.3.1 Insufficient system storage")
    assert after[0] == 250
    assert finished[0] == 250 and retried[0] == 250
    assert [m.rcpt_tos for m in handler.messages] == [["r1@x.test"], ["r2@x.test"]]
    assert bytes_in_flight("submission") == held_before
