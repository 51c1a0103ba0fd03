"""The DATA bytes all intake sessions of one process hold (`intake.max_data_bytes_in_flight`),
against the real intake over real sockets into real PostgreSQL: a DATA that does not fit next
to another one being received is read to its end, never stored, and answered 452 4.3.1 once per
recipient; when the other DATA has ended, its bytes are given back and the retry is delivered."""

from __future__ import annotations

import asyncio

from tests.intake_support import (
    LMTPClient,
    add_certificate,
    dot_stuff,
    intake_config,
    port_of,
    running_intake,
    stored_messages,
)
from tests.support import bytes_in_flight, make_vaultbox

BUDGET = 200_000


def message(message_id: str, size: int) -> bytes:
    header = (
        f"From: <a@sender.test>\r\nTo: <db1@vault.test>\r\nSubject: big\r\n"
        f"Message-ID: <{message_id}@sender.test>\r\n\r\n"
    ).encode()
    line = b"x" * 98 + b"\r\n"
    return header + line * (size // len(line))


async def test_a_data_over_the_process_budget_is_refused_until_the_other_ends(databases, tmp_path):
    boxes = [await make_vaultbox(databases, f"db{n}@vault.test") for n in (1, 2)]
    for box in boxes:
        await add_certificate(databases, box.vaultbox, tmp_path)
    cfg = intake_config(databases, max_message_size=BUDGET, max_data_bytes_in_flight=BUDGET)
    recipients = ["db1@vault.test", "db2@vault.test"]
    first_data = dot_stuff(message("first", 150_000))
    second_data = message("second", 100_000)
    held_before = bytes_in_flight("intake")
    async with running_intake(cfg):
        first = await LMTPClient.connect(port_of(cfg))
        second = await LMTPClient.connect(port_of(cfg))
        try:
            await first.command("LHLO client.test")
            assert (await first.command("MAIL FROM:<a@sender.test>")).startswith("250")
            assert (await first.command("RCPT TO:<db1@vault.test>")).startswith("250")
            assert (await first.command("DATA")).startswith("354")
            half = len(first_data) // 2 + 30_000  # 105 000 bytes held, no final dot yet
            first.writer.write(first_data[:half])
            await first.writer.drain()
            for _ in range(1000):  # until the intake has read (and holds) all of it
                if bytes_in_flight("intake") >= held_before + half:
                    break
                await asyncio.sleep(0.01)
            assert bytes_in_flight("intake") == held_before + half

            await second.command("LHLO client.test")
            _, refused = await second.transaction("a@sender.test", recipients, second_data)
            assert refused == ["452 4.3.1 Insufficient system storage"] * 2
            # The refused data was read to its final dot: the session goes on.
            assert (await second.command("NOOP")).startswith("250")
            for box in boxes:
                assert await stored_messages(databases, box.vaultbox) == []

            first.writer.write(first_data[half:] + b".\r\n")
            assert (await first.reply())[-1].startswith("250 2.0.0")

            _, delivered = await second.transaction("a@sender.test", recipients, second_data)
            assert [reply[:9] for reply in delivered] == ["250 2.0.0"] * 2
        finally:
            await first.close()
            await second.close()
    for box in boxes:
        stored = await stored_messages(databases, box.vaultbox)
        assert [row["message_id"] for row in stored] == (
            ["<first@sender.test>", "<second@sender.test>"]
            if box is boxes[0]
            else ["<second@sender.test>"]
        )
    assert bytes_in_flight("intake") == held_before  # all given back
