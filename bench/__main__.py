"""`python -m bench NAME [NAME ...]`: run benchmarks by name; no name lists them.

Add one by putting `"name": "module:function"` in BENCHES (imported only when run). Options
after the names (`python -m bench compare --rounds 5`) are left for the benchmarks to read.
"""

from __future__ import annotations

import importlib
import sys

BENCHES: dict[str, str] = {
    "state": "bench.state_bench:main",
    "generation": "bench.generation_bench:main",
    "queue": "bench.queue_bench:main",
    "webhook": "bench.webhook_bench:main",
    "http": "bench.http_bench:main",
    "ack-start": "bench.ack_start_bench:main",
    "restart": "bench.restart_bench:main",
    "compare": "bench.compare_bench:main",
    "cluster": "bench.cluster_bench:main",
    "threads": "bench.threads_bench:main",
}


def run(name: str) -> None:
    module, _, func = BENCHES[name].partition(":")
    getattr(importlib.import_module(module), func)()


def main(argv: list[str]) -> int:
    flags = [i for i, a in enumerate(argv) if a.startswith("-")]
    argv = argv[: flags[0]] if flags else argv
    unknown = [n for n in argv if n not in BENCHES]
    if not argv or unknown:
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}", file=sys.stderr)
        print("usage: python -m bench NAME [NAME ...]; names: " + ", ".join(sorted(BENCHES)))
        return 2 if unknown else 0
    for name in argv:
        run(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
