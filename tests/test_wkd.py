"""The Web Key Directory served from real PostgreSQL over a real socket, fetched with
http.client at the URLs GnuPG computes (`gpg-wks-client --print-wkd-url`) and imported into
GnuPG. GnuPG's own fetcher (dirmngr 2.2.40) fetches WKD only by HTTPS on port 443 and verifies
the server only against the system's CA store: with a TLS front on 127.0.0.1:443 for
`user@localhost` and a test CA given as `hkp-cacert`, dirmngr reached it and refused it ("The
certificate issuer is unknown"; hkp-cacert serves keyservers only). A test cannot change the
host's trust store, so the HTTPS hop (the domain's proxy in production) is left out here."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from encimap import openpgp
from encimap.pgcluster import free_port
from encimap.service.http import Request
from encimap.store import openpgp_keys
from encimap.wkd import directory
from tests.openpgp_support import gpg, make_key, stop_agent, tools_missing
from tests.service_support import running_service
from tests.support import Databases, make_config, make_vaultbox

WKS_CLIENT = "/usr/lib/gnupg/gpg-wks-client"
pytestmark = pytest.mark.skipif(
    bool(tools_missing()) or not Path(WKS_CLIENT).exists(), reason="GnuPG tools missing"
)


def wkd_urls(address: str) -> tuple[str, str]:
    """(advanced, direct) URL GnuPG looks up for `address`."""
    advanced = subprocess.run(
        [WKS_CLIENT, "--print-wkd-url", address], capture_output=True, text=True, check=True
    ).stdout.strip()
    parts = urlsplit(advanced)
    domain = parts.hostname.removeprefix("openpgpkey.")
    direct = f"https://{domain}{parts.path.replace(f'/{domain}/hu/', '/hu/')}?{parts.query}"
    return advanced, direct


def fetch(port: int, url: str, method: str = "GET") -> tuple[int, bytes, str]:
    """GET `url` from the test listener with the URL's host in the Host header."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        target = parts.path + (f"?{quote(parts.query, safe='=&')}" if parts.query else "")
        connection.request(method, target, headers={"Host": parts.hostname})
        response = connection.getresponse()
        return response.status, response.read(), response.getheader("Content-Type", "")
    finally:
        connection.close()


@pytest.fixture(scope="module")
def key():
    made = make_key("Web.Key@wkd.test")
    yield made
    stop_agent(made)


async def _publish(databases: Databases, address: str, armored: bytes, status: str) -> None:
    box = (await make_vaultbox(databases, address, status=status)).vaultbox
    cert, info = openpgp.check_key(armored, box.address)
    conn = await databases.connect()
    try:
        await openpgp_keys.put_key(conn, vaultbox_id=box.id, armored_key=str(cert), info=info)
    finally:
        await conn.close()


async def test_gnupg_imports_the_key_from_both_methods(databases, key) -> None:
    await _publish(databases, "Web.Key@wkd.test", key.public, "active")
    port = free_port()
    cfg = make_config(databases, wkd={"listen": f"127.0.0.1:{port}"})
    async with running_service(cfg, "wkd"):
        advanced, direct = wkd_urls("web.key@WKD.test")
        results = [await asyncio.to_thread(fetch, port, url) for url in (advanced, direct)]
        policy = await asyncio.to_thread(
            fetch, port, "https://wkd.test/.well-known/openpgpkey/policy"
        )
    for status, body, content_type in results:
        assert status == 200
        assert content_type == "application/octet-stream"
        assert not body.startswith(b"-----")  # binary, as the draft requires
        home = Path(tempfile.mkdtemp(prefix="gpg-wkd-"))
        try:
            home.chmod(0o700)
            gpg(home, "--import", data=body)
            listed = gpg(home, "--with-colons", "--list-keys").decode()
            assert f":{key.fingerprint}:" in listed
            assert "<web.key@wkd.test>" in listed.lower()
            assert "sec:" not in listed
        finally:
            shutil.rmtree(home)
    assert policy[0] == 200


async def test_unknown_inactive_and_malformed_get_404(databases, key) -> None:
    suspended = make_key("gone@wkd.test")
    try:
        await _publish(databases, "gone@wkd.test", suspended.public, "suspended")
    finally:
        stop_agent(suspended)
    await make_vaultbox(databases, "nokey@wkd.test")
    port = free_port()
    cfg = make_config(databases, wkd={"listen": f"127.0.0.1:{port}"})
    async with running_service(cfg, "wkd"):
        statuses = {
            address: (await asyncio.to_thread(fetch, port, wkd_urls(address)[0]))[0]
            for address in ("gone@wkd.test", "nokey@wkd.test", "unknown@wkd.test")
        }
        other_domain = await asyncio.to_thread(fetch, port, wkd_urls("web.key@other.test")[0])
        malformed = await asyncio.to_thread(
            fetch, port, "https://wkd.test/.well-known/openpgpkey/hu/not-a-hash"
        )
        posted = await asyncio.to_thread(fetch, port, wkd_urls("web.key@wkd.test")[0], "POST")
    assert statuses == {"gone@wkd.test": 404, "nokey@wkd.test": 404, "unknown@wkd.test": 404}
    assert other_domain[0] == 404 and malformed[0] == 404
    assert posted[0] == 405


async def test_connections_over_the_per_address_limit_are_closed_unanswered(databases) -> None:
    """Idle connections from one address cannot take every descriptor: past the limit a new
    one is closed at once, and a slot frees when one closes."""
    port = free_port()
    cfg = make_config(databases, wkd={"listen": f"127.0.0.1:{port}", "max_connections_per_ip": 2})
    async with running_service(cfg, "wkd"):
        idle = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        await asyncio.sleep(0.2)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /.well-known/openpgpkey/policy HTTP/1.0\r\n\r\n")
        try:
            answer = await asyncio.wait_for(reader.read(), 5)
        except ConnectionResetError:  # closed before our request was read
            answer = b""
        assert answer == b""  # closed unanswered
        writer.close()
        idle[0][1].close()
        await asyncio.sleep(0.2)
        status = await asyncio.to_thread(
            fetch, port, "https://wkd.test/.well-known/openpgpkey/policy"
        )
        assert status[0] == 200
        for _, held in idle[1:]:
            held.close()


@pytest.mark.parametrize(
    "address", ["Web.Key@Example.ORG", "a+B@wkd.test", "JÖRG@wkd.test", "İstanbul@wkd.test"]
)
def test_paths_and_hashes_are_gnupgs(address: str) -> None:
    """The hash lower-cases ASCII letters only (draft section 3.1), as GnuPG does: "JÖRG" is
    hashed as "jÖrg" (it was hashed as "jörg"), and both URL forms parse to GnuPG's hash and
    the lower-cased domain."""
    printed = subprocess.run(
        [WKS_CLIENT, "--print-wkd-hash", address], capture_output=True, text=True, check=True
    ).stdout.split()[0]
    assert directory.hashed_local_part(address.rsplit("@", 1)[0]) == printed
    domain = address.rsplit("@", 1)[1].lower()
    for url in wkd_urls(address):
        parts = urlsplit(url)
        request = Request("GET", parts.path, parts.query, {"host": parts.hostname}, "127.0.0.1")
        assert directory.parse(request) == (domain, printed), url


async def test_a_non_ascii_local_part_is_found(databases) -> None:
    address = "JÖRG@wkd.test"
    key = make_key(address)
    try:
        await _publish(databases, address, key.public, "active")
    finally:
        stop_agent(key)
    port = free_port()
    cfg = make_config(databases, wkd={"listen": f"127.0.0.1:{port}"})
    async with running_service(cfg, "wkd"):
        status, body, _ = await asyncio.to_thread(fetch, port, wkd_urls(address)[0])
    assert status == 200 and bytes(openpgp.load_key(body)) == body


async def test_a_key_with_a_non_ascii_user_id_is_served(databases) -> None:
    """The stored armour names the user IDs in Comment lines, in UTF-8: a key of "Jörg Müller
    <jm@wkd.test>" got 500 (the armour was encoded as ASCII)."""
    key = make_key("jm@wkd.test")
    try:
        gpg(key.home, "--quick-add-uid", key.fingerprint, "Jörg Müller <jm@wkd.test>")
        await _publish(
            databases,
            "jm@wkd.test",
            gpg(key.home, "--armor", "--export", key.fingerprint),
            "active",
        )
    finally:
        stop_agent(key)
    port = free_port()
    cfg = make_config(databases, wkd={"listen": f"127.0.0.1:{port}"})
    async with running_service(cfg, "wkd"):
        status, body, _ = await asyncio.to_thread(fetch, port, wkd_urls("jm@wkd.test")[0])
    assert status == 200, status
    assert "Jörg Müller <jm@wkd.test>" in map(str, openpgp.load_key(body).user_ids)
