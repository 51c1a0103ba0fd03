"""`python -m bench [NAME ...]` (make bench): the benchmarks, each in its own process."""

import subprocess
import sys

BENCHMARKS = [
    "smime",
    "openpgp",
    "auth",
    "intake",
    "submission",
    "imap",
    "adoption",
    "scale",
    "failover",
]

failed = []
for name in sys.argv[1:] or BENCHMARKS:
    print(f"== bench.{name}", flush=True)
    if subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False).returncode:
        failed.append(name)
sys.exit(f"failed: {', '.join(failed)}" if failed else 0)
