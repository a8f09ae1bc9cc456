"""`python -m bench threads` runs end to end on a tiny drain and accounts for its threads.

1,000 jobs, 1 round: this proves the script and its table (each of genqueue's working threads
named, the total the sum of the rows), not any speed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_threads_bench_names_each_thread_and_adds_them_up() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "threads", "--jobs", "1000", "--rounds", "1"],
        cwd=ROOT,
        env=os.environ,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    cells = {
        row[0]: row[1:]
        for line in proc.stdout.splitlines()
        if line.startswith("| ") and not line.startswith("| thread")
        for row in [[c.strip() for c in line.strip("|").split("|")]]
    }
    for thread in ("queue actor", "job shards", "event loop", "SQLite worker", "committer"):
        assert thread in cells, proc.stdout
    parts = sum(float(v[0]) for name, v in cells.items() if name != "all")
    assert abs(float(cells["all"][0]) - parts) < 0.02 * len(cells), proc.stdout
    assert cells["all"][2].endswith(" cores"), proc.stdout
    assert "collections a 1,000 jobs" in proc.stdout and "KB a job" in proc.stdout
