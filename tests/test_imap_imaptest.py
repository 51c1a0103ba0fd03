"""Dovecot's imaptest against the IMAP service: its scripted compliance tests on the S/MIME
corpus (`tests-cipher`, the bytes encimap stores) must pass wherever Dovecot 2.3.19 passes, and
its stress run (random concurrent sessions whose every reply is checked against the state the
earlier replies imply) must report no error.

imaptest is found in `../shared/tools/imaptest` beside the repository (IMAPTEST_DIR overrides);
the tests skip when it or Debian's libdovecot is absent.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from tests import dovecot_support, imaptest_support
from tests.imap_support import encrypt_for, imap_config, make_box, ports, running_imap
from tests.imaptest_support import IMAPTEST

REFERENCE = "dovecot-2.3.19-tests-cipher.tsv"

# Tests Dovecot passes that need an extension encimap does not offer (see docs/imap.md),
# with the reason. This is the only list of accepted differences; a test in it that passes
# fails the run, so the list cannot go stale.
EXPECTED_FAILURES: dict[str, str] = {
    "append-binary": (
        "the plaintext it APPENDs is stored encrypted, so BINARY[1] is the S/MIME part, not "
        "the appended bytes (its only mismatch; every reply status is as expected)"
    ),
    "catenate": (
        "the plaintext it APPENDs is stored encrypted: its FETCH BODY[] does not match and so "
        "binds no $uid, which its later URLs need; test_catenate_scripts_with_encrypted_messages "
        "runs it with encrypted messages"
    ),
    "catenate-multiappend": (
        "as catenate: the plaintext it APPENDs is stored encrypted (see "
        "test_catenate_scripts_with_encrypted_messages)"
    ),
}

pytestmark = pytest.mark.skipif(
    imaptest_support.available() is not None, reason=str(imaptest_support.available())
)


def _summary(path: Path) -> dict[str, str]:
    """test name -> PASS / FAIL / SKIP / TIMEOUT from a summary.tsv of imaptest's `run`."""
    results = {}
    for line in path.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2:
            results[fields[0]] = fields[1]
    return results


@pytest.fixture
def cfg(databases, tls_files):
    # imaptest logs in with plain LOGIN on the STARTTLS port: loopback is trusted. Messages it
    # APPENDs in plaintext are encrypted; with the Subject kept in clear (an operator option)
    # the outer header still has what its APPEND tests read back.
    cfg = imap_config(databases, tls_files, trusted_networks=["127.0.0.0/8"])
    return dataclasses.replace(cfg, smime=dataclasses.replace(cfg.smime, hide_subject=False))


async def test_scripted_tests_pass_where_dovecot_passes(databases, cfg, tmp_path):
    box = await make_box(databases, "imaptest@example.test", tmp_path)
    port, _ = ports(cfg)
    out = tmp_path / "imaptest"
    async with running_imap(cfg):
        process = await asyncio.create_subprocess_exec(
            str(IMAPTEST / "run"),
            "127.0.0.1",
            str(port),
            box.username,
            box.password,
            "tests-cipher",
            str(out),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    assert process.returncode == 0, output.decode(errors="replace")
    ours = _summary(out / "summary.tsv")
    theirs = _summary(IMAPTEST / REFERENCE)
    print(output.decode(errors="replace"))  # the PASS/FAIL/SKIP counts, shown with -s
    failing = {
        name: (out / f"{name}.err").read_text(errors="replace")[:2000]
        for name, result in theirs.items()
        if result == "PASS" and ours.get(name) != "PASS" and name not in EXPECTED_FAILURES
    }
    assert not failing, "\n".join(f"== {name}\n{text}" for name, text in failing.items())
    now_passing = [name for name in EXPECTED_FAILURES if ours.get(name) == "PASS"]
    assert not now_passing, f"passing now, remove from EXPECTED_FAILURES: {now_passing}"


async def _stress(cfg, box, *extra: str) -> str:
    port, _ = ports(cfg)
    async with running_imap(cfg):
        process = await asyncio.create_subprocess_exec(
            *imaptest_support.stress_command(port, box.username, box.password, *extra),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await process.communicate()
    return output.decode(errors="replace")


async def test_stress_run_reports_no_errors(databases, cfg, tmp_path):
    box = await make_box(databases, "stress@example.test", tmp_path)
    output = await _stress(cfg, box, "clients=10", "secs=10")
    assert not imaptest_support.panicked(output) and "Logi" in output, output[-3000:]
    errors = imaptest_support.errors(output)
    assert not errors, "\n".join(errors[:50])


async def test_stress_checkpoints_report_no_errors(databases, cfg, tmp_path):
    """checkpoint=5: every 5 s the sessions stop, CHECK, and their views of the mailbox
    (messages, UIDs, flags, keywords, \\Recent in exactly one session) must agree.

    Two clients: with more, imaptest's checkpoint mode trips its own assertions
    (client_update_plan, array_idx_modifiable_i) within seconds, against Dovecot 2.3.19 too;
    a run cut short that way is retried. The 10-client run without checkpoints is above."""
    box = await make_box(databases, "checkpoint@example.test", tmp_path)
    errors: list[str] = []
    complete = False
    for _attempt in range(3):
        output = await _stress(cfg, box, "clients=2", "secs=12", "checkpoint=5")
        errors += imaptest_support.errors(output)
        if not imaptest_support.panicked(output):
            assert imaptest_support.totals(output).get("ChkP", 0) > 0, output[-3000:]
            complete = True
            break
    assert not errors, "\n".join(errors[:50])
    if not complete:
        pytest.skip("imaptest panicked (its own assertion) in every attempt")


# A header that declares S/MIME enveloped data: APPEND stores such a message as it is.
_ENVELOPED = (
    b"MIME-Version: 1.0\nContent-Type: application/pkcs7-mime; smime-type=enveloped-data; "
    b'name="smime.p7m"\nContent-Transfer-Encoding: base64\n'
)


def _lf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n")


def _encrypted_catenate_scripts(box) -> dict[str, bytes]:
    """imaptest's catenate and catenate-multiappend with every message they store already
    encrypted, which encimap (and Dovecot) store unchanged: their plaintext messages become
    S/MIME envelopes of that plaintext, and each TEXT header gets the S/MIME Content-Type.
    What the scripts then read back are the bytes any server must hold, so every reply,
    bodies included, must match."""

    def envelope(text: bytes) -> bytes:
        return _lf(encrypt_for(box, text.replace(b"\n", b"\r\n")))

    def header(message: bytes) -> bytes:
        return message[: message.index(b"\n\n") + 2]

    foo = b"From: foo@example.com\n\nHello world body\n"
    e1 = envelope(foo)
    t1 = e1[len(header(e1)) :]
    # the second message's body looks like a message (the original's "Lookslike: header"):
    # here an envelope, so its TEXT and part 1 are encrypted messages too
    inner = envelope(b"Lookslike: header\n\nAnother body\n")
    e2 = b"From: foo2@example.com\n" + _ENVELOPED + b"\n" + inner
    new = b"From: new@example.com\nSubject: test header\n"
    catenate = {
        foo: e1,
        b"From: foo2@example.com\n\nLookslike: header\n\nAnother body\n": e2,
        b"From: foo@example.com\n\nbody1\n": header(e1) + b"body1\n",
        b"From: foo@example.com\n\nbody2\n": header(e1) + b"body2\n",
        b"Lookslike: header\n\nAnother body\nbody3\n": inner + b"body3\n",
        b"Lookslike: header\n\nAnother body\nbody4\n": inner + b"body4\n",
        new + b"\n": new + _ENVELOPED + b"\n",
        new + b"\nHello world body\n\nsuffix\n": new + _ENVELOPED + b"\n" + t1 + b"\nsuffix\n",
        b"Subject: hdr2\n": b"Subject: hdr2\n" + _ENVELOPED,
        b"From: hdr1@example.com\nSubject: hdr2\n\nbody6\n": (
            b"From: hdr1@example.com\nSubject: hdr2\n" + _ENVELOPED + b"\nbody6\n"
        ),
        b"Hdr: foo\n\nbody7\n": b"Hdr: foo\n" + _ENVELOPED + b"\nbody7\n",
    }
    bar = b"From: bar@example.com\n\nSecond body\n"
    e2b = envelope(bar)
    multiappend = {
        foo: e1,
        bar: e2b,
        b"From: foo@example.com\n\nbody1\n": header(e1) + b"body1\n",
        b"From: bar@example.com\n\nbody2\n": header(e2b) + b"body2\n",
        b"From: bar@example.com\n\nbody3\n": header(e2b) + b"body3\n",
        b"New: Message\n\nbody4\n": envelope(b"New: Message\n\nbody4\n"),
        b"New: Message\n\nbody5\n": envelope(b"New: Message\n\nbody5\n"),
    }
    return {
        name: imaptest_support.with_literals(
            (IMAPTEST / "tests-cipher" / name).read_bytes(), replacements
        )
        for name, replacements in (
            ("catenate", catenate),
            ("catenate-multiappend", multiappend),
        )
    }


async def _run_scripts(port: int, user: str, password: str, scripts: dict[str, Path]) -> dict:
    """name -> (passed, imaptest's report) for each script run against the server (a
    relative path is one of tests-cipher's)."""
    results = {}
    for name, path in scripts.items():
        process = await asyncio.create_subprocess_exec(
            *imaptest_support.script_command(port, user, password, path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=IMAPTEST / "tests-cipher",
        )
        output, errors = await process.communicate()
        text = output.decode(errors="replace")
        report = errors.decode(errors="replace")
        results[name] = (imaptest_support.script_passed(text, report), text + report)
    return results


async def _run_scripts_on_dovecot(scripts: dict[str, Path]) -> dict[str, tuple[bool, str]]:
    """`_run_scripts` against a private Dovecot with an empty mailbox."""
    dovecot = dovecot_support.Dovecot([])
    await asyncio.to_thread(dovecot.start)
    try:
        return await _run_scripts(dovecot.port, dovecot.user, dovecot.password, scripts)
    finally:
        await asyncio.to_thread(dovecot.stop)


async def test_catenate_scripts_with_encrypted_messages(databases, cfg, tmp_path):
    """imaptest's CATENATE scripts, every message already encrypted: every command gets
    the reply the script expects (the invalid-URL NOs, TRYCREATE) and every body read back
    matches, on encimap and on Dovecot alike."""
    box = await make_box(databases, "catenate-script@example.test", tmp_path)
    scripts = {}
    for name, text in _encrypted_catenate_scripts(box).items():
        scripts[name] = tmp_path / name
        scripts[name].write_bytes(text)
    port, _ = ports(cfg)
    async with running_imap(cfg):
        ours = await _run_scripts(port, box.username, box.password, scripts)
    failed = {name: report[-3000:] for name, (passed, report) in ours.items() if not passed}
    assert not failed, failed
    if dovecot_support.available() is None:  # the same scripts hold for Dovecot
        theirs = await _run_scripts_on_dovecot(scripts)
        failed = {name: report[-3000:] for name, (passed, report) in theirs.items() if not passed}
        assert not failed, failed


@pytest.mark.skipif(dovecot_support.available() is not None, reason="no Dovecot oracle")
async def test_binary_fetch_scripts_answer_as_dovecot(databases, cfg, tmp_path):
    """imaptest's fetch-binary scripts on the S/MIME corpus fail on both servers (the parts
    they read are inside the envelope), with the same replies: imaptest's report of every
    reply it got is byte for byte Dovecot's."""
    box = await make_box(databases, "binary-script@example.test", tmp_path)
    names = ("fetch-binary-mime", "fetch-binary-mime-base64", "fetch-binary-mime-qp")
    scripts = {name: Path("./" + name) for name in names}
    port, _ = ports(cfg)
    async with running_imap(cfg):
        ours = await _run_scripts(port, box.username, box.password, scripts)
    theirs = await _run_scripts_on_dovecot(scripts)
    for name in names:
        assert "BINARY" in theirs[name][1], theirs[name][1]  # the replies are in the report
        assert ours[name] == theirs[name], name
