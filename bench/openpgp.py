"""Benchmark of the OpenPGP engine against `gpg --encrypt` and `sq encrypt` of the same bytes.

Run: python -m bench.openpgp. One Ed25519/X25519 key (made by GnuPG, as `encimap key
generate` makes them). Each round runs ours, gpg and sq once, in turn, on the same message
(alternating, so that load from other processes hits all three alike); figures are medians
with ratios against the tools measured in the same run. Ours is the whole stored message
(header protection, PGP/MIME, armour, CRLF); the tools write an armoured OpenPGP message and
include process start, and both compress (zlib) by default, which ours does not.
Targets: at least as fast as gpg, peak memory at most 3x the message.
"""

from __future__ import annotations

import multiprocessing
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import pysequoia

from bench.smime import _status_bytes, make_message
from encimap import openpgp
from encimap.openpgp.generate import generate_key

MB = 1024 * 1024
CASES = [("10 KB", 10 * 1024, 21), ("50 MB", 50 * MB, 5)]
MEMORY_SIZES = [("1 MB", MB), ("10 MB", 10 * MB), ("50 MB", 50 * MB)]


def run(command: list[str]) -> None:
    subprocess.run(command, check=True, capture_output=True)


def rss_growth(message_path: Path, public: bytes) -> int:
    """Peak RSS growth in a fresh process (Linux VmHWM, reset just before encrypting)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_rss_child, (str(message_path), public))


def _rss_child(message_path: str, public: bytes) -> int:
    raw = Path(message_path).read_bytes()
    cert = pysequoia.Cert.from_bytes(public)
    openpgp.encrypt_message(raw[:1024], [cert])  # import and warm up everything first
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (proc(5))
    before = _status_bytes("VmRSS")
    openpgp.encrypt_message(raw, [cert])
    return _status_bytes("VmHWM") - before


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="bench-gpg-"))
    try:
        home.chmod(0o700)
        key = generate_key("box@example.org", "bench passphrase")
        public_path = home / "public.asc"
        public_path.write_bytes(key.public_armored)
        gpg = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--trust-model", "always"]
        run([*gpg, "--import", str(public_path)])
        cert = pysequoia.Cert.from_bytes(key.public_armored)
        message_path, out = home / "message.eml", home / "out.asc"
        commands = {
            "gpg": [*gpg, "--yes", "--armor", "--encrypt", "-r", key.fingerprint,
                    "-o", str(out), str(message_path)],
            "sq": ["sq", "--force", "encrypt", "--recipient-cert", str(public_path),
                   "--output", str(out), str(message_path)],
        }  # fmt: skip
        if shutil.which("sq") is None:
            del commands["sq"]
        print("OpenPGP encryption to one Ed25519/X25519 key, medians of alternating rounds")
        print(
            f"{'size':>8} {'ours':>9} "
            + " ".join(f"{name:>9}" for name in commands)
            + " "
            + " ".join(f"{'ours/' + name:>9}" for name in commands)
        )
        for label, size, runs in CASES:
            raw = make_message(size)
            message_path.write_bytes(raw)
            times: dict[str, list[float]] = {"ours": [], **{name: [] for name in commands}}
            for _ in range(runs):
                start = time.perf_counter()
                openpgp.encrypt_message(raw, [cert])
                times["ours"].append(time.perf_counter() - start)
                for name, command in commands.items():
                    start = time.perf_counter()
                    run(command)
                    times[name].append(time.perf_counter() - start)
            median = {name: statistics.median(values) for name, values in times.items()}
            print(
                f"{label:>8} {median['ours'] * 1000:>7.1f}ms "
                + " ".join(f"{median[name] * 1000:>7.1f}ms" for name in commands)
                + " "
                + " ".join(f"{median['ours'] / median[name]:>8.2f}x" for name in commands)
            )
        print("(ours/tool: ours time / tool time, lower is better; tools include process start)")
        print("Peak RSS growth while encrypting, in a fresh process (VmHWM):")
        for label, size in MEMORY_SIZES:
            raw = make_message(size)
            message_path.write_bytes(raw)
            growth = rss_growth(message_path, key.public_armored)
            print(f"  {label}: {growth / MB:.1f} MB = {growth / len(raw):.2f}x the message size")
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], check=False)
    finally:
        shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
