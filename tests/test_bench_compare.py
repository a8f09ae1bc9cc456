"""`python -m bench compare` runs end to end in its quick mode and prints every row.

Tiny sizes (50 jobs, 1 round): this proves the script and its table, not any speed. arq's
rows are expected only where `redis-server` is on PATH; without it the bench says it skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(*args: str, **env: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "compare", *args],
        cwd=ROOT,
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def rows(out: str, prefix: str) -> list[list[str]]:
    """The table rows starting with `prefix`, split into cells."""
    return [
        [c.strip() for c in line.strip("|").split("|")]
        for line in out.splitlines()
        if line.startswith(f"| {prefix}")
    ]


def test_quick_compare_prints_every_row() -> None:
    out = bench("--quick", "--rounds", "1")
    peers = ["genqueue", "Huey"] + (["arq"] if shutil.which("redis-server") else [])

    assert out.startswith("## Side by side: genqueue, Huey")
    assert [r[1] for r in rows(out, "drain 50 instant jobs")] == peers
    dispatch = [(r[1], r[2]) for r in rows(out, "dispatch p50 / p99 ms")]
    expected = [("genqueue", "alarm dispatch")] + [
        (p, f"polling {k}") for p in peers[1:] for k in ("default", "10 ms", "1 ms")
    ]
    assert dispatch == expected
    for measure in ("wall s", "peak OS threads", "peak RSS MB"):
        assert [r[1] for r in rows(out, f"20 jobs of 0.2 s at concurrency 10: {measure}")] == peers
    for r in rows(out, "drain") + rows(out, "20 jobs"):
        assert all(cell.replace(",", "").replace(".", "").isdigit() for cell in r[3:6]), r

    modes = {r[0]: r for r in rows(out, "`")}
    assert list(modes) == ["`immediate`", "`cron` (a pass every 0.05 s)", "`alarm`"]
    # The plan's "sequential" column, measured: with max_concurrency 1 only immediate overlaps.
    assert int(modes["`alarm`"][5]) == 1
    assert int(modes["`cron` (a pass every 0.05 s)"][5]) == 1
    assert modes["`alarm`"][6] == "1 of 1 rounds"

    assert len(rows(out, "genqueue: `open()`")) == 1
    assert "restart with 200 queued jobs under 3 s" in out
    if "arq" not in peers:
        assert "arq skipped: no `redis-server` on PATH." in out


def test_quick_compare_without_arq_says_so() -> None:
    out = bench("--no-arq", GENQUEUE_BENCH_QUICK="1", GENQUEUE_BENCH_ROUNDS="1")
    assert "arq skipped: --no-arq." in out
    assert not rows(out, "drain 50 instant jobs, jobs/s | arq")
    assert "- drain at least 3x Huey's best:" in out
