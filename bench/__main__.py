"""`python -m bench` (make bench): every benchmark, one after another."""

import importlib
import sys

BENCHMARKS = ["smime", "intake", "auth", "submission", "imap"]

for name in sys.argv[1:] or BENCHMARKS:
    print(f"== bench.{name}", flush=True)
    importlib.import_module(f"bench.{name}").main()
