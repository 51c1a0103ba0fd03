"""`encimap key import|generate|list|remove|prefer`: a vaultbox's OpenPGP keys.

The server keeps only public keys (table `openpgp_keys`). `generate` writes the secret key,
protected by a passphrase read like the other passwords, to a file for the user's client.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pysequoia

from encimap import db, openpgp
from encimap.cli.common import CommandError, read_or_generate_password
from encimap.config import Config
from encimap.openpgp.generate import generate_key
from encimap.store import openpgp_keys, vaultboxes


async def import_key(cfg: Config, args: argparse.Namespace) -> int:
    try:
        data = Path(args.key).read_bytes()
    except OSError as exc:
        raise CommandError(f"{args.key}: {exc.strerror}") from None
    try:
        cert = openpgp.load_key(data)
    except openpgp.KeyRefused as exc:
        raise CommandError(f"{args.key} cannot be used for {args.address}: {exc}") from None
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        # A copy of a stored key is merged into the stored one, as GnuPG merges an import:
        # an older copy must not undo a revocation or drop a subkey the stored copy has.
        for stored in await openpgp_keys.keys_of(conn, box.id):
            if stored.fingerprint == cert.fingerprint.upper():
                cert = pysequoia.Cert.from_bytes(stored.armored_key.encode()).merge(cert)
        try:
            _, info = openpgp.check_key(
                cert, box.address, allow_address_mismatch=cfg.smime.allow_address_mismatch
            )
        except openpgp.KeyRefused as exc:
            # An update of a stored key (its revocation, say) still replaces the stored copy,
            # so that the intake stops using it at once.
            if await openpgp_keys.replace_stored_key(
                conn, vaultbox_id=box.id, fingerprint=cert.fingerprint, armored_key=str(cert)
            ):
                print(f"updated {cert.fingerprint.upper()} for {box.address}: {exc}")
                print("mail is no longer encrypted to this key")
                return 0
            raise CommandError(f"{args.key} cannot be used for {box.address}: {exc}") from None
        _, new = await openpgp_keys.put_key(
            conn, vaultbox_id=box.id, armored_key=str(cert), info=info
        )
    _describe("imported for" if new else "updated for", box.address, info)
    return 0


async def generate(cfg: Config, args: argparse.Namespace) -> int:
    output = Path(args.out)
    if output.exists():
        raise CommandError(f"{output} exists; not overwriting it")
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        passphrase, generated = read_or_generate_password("secret key passphrase")
        try:
            key = generate_key(box.address, passphrase, rsa=args.rsa)
            cert, info = openpgp.check_key(key.public_armored, box.address)
        except openpgp.OpenPGPError as exc:
            raise CommandError(str(exc)) from None
        output.touch(mode=0o600)
        output.write_bytes(key.secret_armored)
        await openpgp_keys.put_key(conn, vaultbox_id=box.id, armored_key=str(cert), info=info)
    _describe("key for", box.address, info)
    print(f"secret key for the mail client: {output} (import: gpg --import {output})")
    if generated:
        print(f"secret key passphrase: {passphrase}")
    return 0


async def list_keys(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        stored = await openpgp_keys.keys_of(conn, box.id)
        preference = await openpgp_keys.preference_of(conn, box.id)
    print(f"{box.address}: preference {preference}")
    mismatch = cfg.smime.allow_address_mismatch
    refusals = []
    for key in stored:
        # The intake's check, so that a key it refuses is never listed as usable.
        try:
            openpgp.check_key(key.armored_key, box.address, allow_address_mismatch=mismatch)
            state = "usable"
        except openpgp.KeyRefused as exc:
            state = "not usable"
            refusals.append(f"{key.fingerprint}: {exc}")
        expires = f"{key.expires_at:%Y-%m-%d}" if key.expires_at else "never"
        print(
            f"{key.fingerprint}  {key.key_algorithm}  expires {expires}  {state}  "
            + ", ".join(key.user_ids)
        )
    for refusal in refusals:
        print(f"not usable {refusal}")
    return 0


async def remove(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        await openpgp_keys.remove_key(conn, box.id, args.fingerprint)
    print(f"removed {args.fingerprint} from {box.address}")
    return 0


async def prefer(cfg: Config, args: argparse.Namespace) -> int:
    async with db.connect(cfg.database, "encimap") as conn:
        box = await vaultboxes.get_vaultbox(conn, args.address)
        await openpgp_keys.set_preference(conn, box.id, args.kind)
    print(f"{box.address} encrypts with {args.kind} when it has keys of both kinds")
    return 0


def _describe(what: str, address: str, info: openpgp.KeyInfo) -> None:
    expires = f"{info.expires:%Y-%m-%d}" if info.expires else "never"
    subkeys = ", ".join(info.encryption_algorithms)
    print(f"{what} {address}: {info.algorithm} (encryption: {subkeys}), expires {expires}")
    print(f"fingerprint: {info.fingerprint}")


def add_parser(commands: argparse._SubParsersAction) -> None:
    key = commands.add_parser("key", help="vaultbox OpenPGP keys").add_subparsers(
        dest="action", required=True
    )
    load = key.add_parser("import", help="store an OpenPGP public key for a vaultbox")
    load.add_argument("address")
    load.add_argument("key", metavar="KEY.asc")
    load.set_defaults(handler=import_key)
    make = key.add_parser("generate", help="new key: public key stored, secret key written")
    make.add_argument("address")
    make.add_argument("--out", required=True, metavar="SECRET.asc")
    make.add_argument("--rsa", action="store_true", help="RSA-3072 instead of Ed25519/X25519")
    make.set_defaults(handler=generate)
    show = key.add_parser("list", help="a vaultbox's OpenPGP keys")
    show.add_argument("address")
    show.set_defaults(handler=list_keys)
    drop = key.add_parser("remove", help="remove an OpenPGP key from a vaultbox")
    drop.add_argument("address")
    drop.add_argument("fingerprint")
    drop.set_defaults(handler=remove)
    choose = key.add_parser("prefer", help="the kind of key used when a vaultbox has both")
    choose.add_argument("address")
    choose.add_argument("kind", choices=openpgp_keys.PREFERENCES)
    choose.set_defaults(handler=prefer)
