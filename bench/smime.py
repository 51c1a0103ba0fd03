"""Benchmark of the S/MIME engine against cryptography's PKCS7EnvelopeBuilder and openssl cms.

Run: python -m bench.smime. Every figure is a median of several runs, printed with its ratio
against the baselines measured in the same run, because absolute times depend on the machine.
Targets at 50 MB: at least 3x faster than the builder's SMIME output, within 2x of
`openssl cms -encrypt`, peak memory growth at most 3x the message size.
"""

from __future__ import annotations

import base64
import multiprocessing
import os
import statistics
import subprocess
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.serialization import Encoding, pkcs7

from encimap.smime import encrypt_message, generate_certificate

MB = 1024 * 1024
# (label, size, runs, LF line endings): LF-only input is the worst case, it must be converted.
CASES = [
    ("10 KB", 10 * 1024, 30, False),
    ("1 MB", MB, 10, False),
    ("50 MB", 50 * MB, 3, False),
    ("50 MB LF", 50 * MB, 3, True),
]


def make_message(size: int, lf_only: bool = False) -> bytes:
    """A typical inbound message: a text part and a base64 attachment, CRLF or LF endings."""
    header = (
        b"From: Alice <alice@example.net>\r\nTo: box@example.org\r\nBcc: b@example.com\r\n"
        b"Subject: benchmark\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\n"
        b"Message-ID: <bench@example.net>\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n'
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nSee attachment.\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n"
    )
    trailer = b"--b--\r\n"
    attachment_bytes = max(0, (size - len(header) - len(trailer)) * 57 // 78)
    encoded = base64.encodebytes(os.urandom(attachment_bytes)).replace(b"\n", b"\r\n")
    message = header + encoded + trailer
    return message.replace(b"\r\n", b"\n") if lf_only else message


def median_seconds(function: Callable[[], object], runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def builder_smime(raw: bytes, certificate: x509.Certificate) -> bytes:
    """cryptography's own path; the caller would still add headers and CRLF (not timed)."""
    return (
        pkcs7.PKCS7EnvelopeBuilder()
        .set_data(raw)
        .add_recipient(certificate)
        .set_content_encryption_algorithm(algorithms.AES256)
        .encrypt(Encoding.SMIME, [])
    )


def openssl_cms(message_path: Path, cert_path: Path, out_path: Path) -> None:
    subprocess.run(
        [
            "openssl",
            "cms",
            "-encrypt",
            "-aes256",
            "-in",
            str(message_path),
            "-out",
            str(out_path),
            str(cert_path),
        ],
        check=True,
    )


def tracemalloc_growth(raw: bytes, pem: bytes) -> int:
    """Peak Python-heap growth while encrypting (every large buffer is a Python object)."""
    tracemalloc.start()
    baseline = tracemalloc.get_traced_memory()[0]
    result = encrypt_message(raw, [pem])
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    del result
    return peak - baseline


def rss_growth(message_path: Path, pem: bytes) -> int:
    """Peak RSS growth in a fresh process (Linux VmHWM, reset just before encrypting)."""
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_rss_child, (str(message_path), pem))


def _rss_child(message_path: str, pem: bytes) -> int:
    raw = Path(message_path).read_bytes()
    encrypt_message(raw[:1024], [pem])  # import and warm up everything first
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak RSS (proc(5))
    before = _status_bytes("VmRSS")
    encrypt_message(raw, [pem])
    return _status_bytes("VmHWM") - before


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise LookupError(field)


def main() -> None:
    pem, _ = generate_certificate("box@example.org")
    certificate = x509.load_pem_x509_certificate(pem)
    print("S/MIME encryption, default profile (AES-256-CBC, RSA-3072), medians")
    print(
        f"{'size':>8} {'ours':>9} {'builder':>9} {'openssl':>9} {'vs builder':>11} "
        f"{'vs openssl':>11}"
    )
    with tempfile.TemporaryDirectory() as directory:
        cert_path = Path(directory, "cert.pem")
        cert_path.write_bytes(pem)
        message_path = Path(directory, "message.eml")
        memory = []
        for label, size, runs, lf_only in CASES:
            raw = make_message(size, lf_only)
            message_path.write_bytes(raw)
            ours = median_seconds(lambda raw=raw: encrypt_message(raw, [pem]), runs)
            builder = median_seconds(lambda raw=raw: builder_smime(raw, certificate), runs)
            openssl = median_seconds(
                lambda: openssl_cms(message_path, cert_path, Path(directory, "out.p7m")), runs
            )
            print(
                f"{label:>8} {ours * 1000:>7.1f}ms {builder * 1000:>7.1f}ms "
                f"{openssl * 1000:>7.1f}ms {builder / ours:>10.2f}x {ours / openssl:>10.2f}x"
            )
            if size >= 50 * MB:
                heap = tracemalloc_growth(raw, pem) / len(raw)
                rss = rss_growth(message_path, pem) / len(raw)
                memory.append(
                    f"  {label}: tracemalloc (Python heap) {heap:.2f}x, "
                    f"RSS in a fresh process (VmHWM) {rss:.2f}x the message size"
                )
        print(
            "(vs builder: builder time / ours, higher is better; "
            "vs openssl: ours / openssl time, lower is better)"
        )
        print("Peak memory growth while encrypting:")
        print("\n".join(memory))


if __name__ == "__main__":
    main()
