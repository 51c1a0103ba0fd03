"""`encimap cert generate|import|purge-private`: a vaultbox's encryption certificate.

The server keeps only the public certificate; `generate` hands the private key to the user as
a password-protected PKCS#12 file for the mail client. `--keep-private-key` additionally keeps
the key on the server, encrypted with that same password (never in clear).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from encimap import db, smime
from encimap.cli.common import CommandError, read_or_generate_password
from encimap.config import Config
from encimap.store import certificates, vaultboxes


async def generate(cfg: Config, args: argparse.Namespace) -> int:
    output = Path(args.p12)
    if output.exists():
        raise CommandError(f"{output} exists; not overwriting it")
    password, generated = read_or_generate_password("PKCS#12 password")
    async with db.connect(cfg.database, "encimap") as conn, conn.transaction():
        box = await vaultboxes.get_vaultbox(conn, args.address)
        cert_pem, key, info = await certificates.add_generated_certificate(
            conn, vaultbox_id=box.id, address=box.address, ec=args.ec
        )
        if args.keep_private_key:
            encrypted_key = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(password.encode()),
            )
            await certificates.add_certificate(
                conn,
                vaultbox_id=box.id,
                certificate_type="private",
                pem_content=encrypted_key.decode(),
                info=info,
            )
        bundle = smime.export_pkcs12(
            cert_pem, key, password.encode(), box.address, legacy=args.legacy
        )
        output.touch(mode=0o600)
        output.write_bytes(bundle)
    _describe("certificate for", box.address, info)
    print(f"PKCS#12 for the mail client: {output}")
    if generated:
        print(f"PKCS#12 password: {password}")
    return 0


async def import_certificate(cfg: Config, args: argparse.Namespace) -> int:
    try:
        pem = Path(args.certificate).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.certificate}: {exc.strerror}") from None
    try:
        info = smime.check_certificate(
            pem, args.address, allow_address_mismatch=cfg.smime.allow_address_mismatch
        )
    except smime.CertificateError as exc:
        raise CommandError(f"{args.certificate} cannot be used for {args.address}: {exc}") from None
    public_pem = smime.load_certificate(pem).public_bytes(serialization.Encoding.PEM).decode()
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        stored = await certificates.public_certificates(conn, box.id)
        await certificates.add_certificate(
            conn, vaultbox_id=box.id, certificate_type="public", pem_content=public_pem, info=info
        )
    _describe("imported for", box.address, info)
    kinds = {_key_family(certificate.key_algorithm) for certificate in stored}
    if kinds - {_key_family(info.key_algorithm)}:
        print(
            f"warning: {box.address} now has RSA and EC certificates; every message is encrypted "
            "to both, and NSS 3.87 (Thunderbird's library family) and Python's cryptography "
            "cannot open such an envelope at all, not even with the RSA key (OpenSSL can)",
            file=sys.stderr,
        )
    return 0


def _key_family(algorithm: str | None) -> str:
    return "rsa" if (algorithm or "").lower().startswith("rsa") else "ec"


def _describe(what: str, address: str, info: smime.CertificateInfo) -> None:
    print(f"{what} {address}: {info.key_algorithm}, valid until {info.not_after:%Y-%m-%d}")
    print(f"fingerprint (SHA-256): {info.fingerprint_sha256}")


async def purge_private(cfg: Config, args: argparse.Namespace) -> int:
    """Delete server-held private keys (of one vaultbox, or all), after confirmation."""
    async with db.connect(cfg.database, "encimap") as conn, conn.transaction():
        box = await vaultboxes.get_vaultbox(conn, args.address) if args.address else None
        where = box.address if box else "all vaultboxes"
        count = await certificates.count_private(conn, box.id if box else None)
        if not count:
            print(f"no server-held private keys ({where})")
            return 0
        _confirm(f"delete {count} server-held private key row(s) of {where}?", args.yes)
        deleted = await certificates.purge_private(conn, box.id if box else None)
    print(f"deleted {deleted} private key row(s) of {where}")
    return 0


def _confirm(question: str, assumed: bool) -> None:
    if assumed:
        return
    if not sys.stdin.isatty():
        raise CommandError(f"{question} Confirm with --yes (stdin is not a terminal)")
    if input(f"{question} Type 'yes': ").strip() != "yes":
        raise CommandError("not confirmed; nothing deleted")


def add_parser(commands: argparse._SubParsersAction) -> None:
    cert = commands.add_parser("cert", help="vaultbox encryption certificates").add_subparsers(
        dest="action", required=True
    )
    make = cert.add_parser("generate", help="new keypair: public cert stored, PKCS#12 written")
    make.add_argument("address")
    make.add_argument("--p12", required=True, metavar="OUT.p12")
    make.add_argument("--ec", action="store_true", help="EC P-256 instead of RSA-3072")
    make.add_argument(
        "--legacy",
        action="store_true",
        help="PKCS#12 with 3DES/SHA-1 for older importers (gpgsm 2.2)",
    )
    make.add_argument(
        "--keep-private-key",
        action="store_true",
        help="also keep the key on the server, encrypted with the PKCS#12 password",
    )
    make.set_defaults(handler=generate)
    load = cert.add_parser("import", help="store a public certificate for a vaultbox")
    load.add_argument("address")
    load.add_argument("certificate", metavar="CERT.pem")
    load.set_defaults(handler=import_certificate)
    purge = cert.add_parser(
        "purge-private", help="delete private keys the server holds (the old service's)"
    )
    purge.add_argument("address", nargs="?", help="only this vaultbox's (default: all)")
    purge.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    purge.set_defaults(handler=purge_private)
