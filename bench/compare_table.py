"""The side-by-side benchmark's results, and their markdown: three tables and the goals."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Results", "render"]

Key = tuple[str, str]  # (measure, system)

PLAN = {  # the plan's comparison matrix, for the dispatch modes it names
    "immediate": "real-time; not sequential; < 10 jobs/min",
    "cron": "1 min delay; sequential; 10-50 jobs/min",
    "alarm": "1 s delay; sequential; 50-100 jobs/min",
}


@dataclass
class Results:
    sizes: Any
    machine: str
    runs: dict[Key, list[dict[str, Any]]] = field(default_factory=dict)
    huey_best: tuple[str, int] = ("thread", 1)
    arq_best: tuple[int, float] = (10, 0.5)
    calibration: dict[str, dict[str, float]] = field(default_factory=dict)
    restart: dict[str, Any] = field(default_factory=dict)
    redis_version: str | None = None
    redis_rss_mb: float | None = None
    notes: list[str] = field(default_factory=list)
    total_s: float = 0.0

    def add(self, key: Key, result: dict[str, Any]) -> None:
        self.runs.setdefault(key, []).append(result)

    def values(self, key: Key, name: str) -> list[float]:
        return [float(r[name]) for r in self.runs.get(key, [])]

    def median(self, key: Key, name: str) -> float:
        vals = self.values(key, name)
        return statistics.median(vals) if vals else float("nan")

    @property
    def has_arq(self) -> bool:
        return ("drain", "arq") in self.runs


def num(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def spread(vals: list[float], digits: int = 0) -> list[str]:
    if not vals:
        return ["—", "—", "—"]
    return [num(v, digits) for v in (min(vals), statistics.median(vals), max(vals))]


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def settings(res: Results) -> dict[str, str]:
    t, w = res.huey_best
    m, p = res.arq_best
    return {
        "genqueue": "alarm dispatch, max_concurrency 256, SQLite FULL",
        "Huey": f"SqliteHuey, {w} {t} worker{'s' * (w > 1)}, SQLite FULL",
        "arq": f"max_jobs {m}, poll every {p:g} s, redis appendfsync always",
    }


def cpu(res: Results, key: Key) -> str:
    """The median CPU seconds the measured process used (and redis-server, for arq)."""
    own = num(res.median(key, "cpu_s"), 1)
    if key[1].startswith("arq"):
        return f"{own} + {num(res.median(key, 'redis_cpu_s'), 1)} redis"
    return own


def peers_table(res: Results) -> list[str]:
    s, sz = settings(res), res.sizes
    peers = ["Huey", "arq"] if res.has_arq else ["Huey"]
    out = [
        row("measure", "system", "setting", "min", "median", "max", "CPU s", "genqueue vs this"),
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    gq = res.median(("drain", "genqueue alarm"), "rate")
    label = f"drain {sz.drain_jobs:,} instant jobs, jobs/s"
    out.append(
        row(
            label,
            "genqueue",
            s["genqueue"],
            *spread(res.values(("drain", "genqueue alarm"), "rate")),
            cpu(res, ("drain", "genqueue alarm")),
            "1.00x",
        )
    )
    for p in peers:
        vals = res.values(("drain", p), "rate")
        out.append(
            row(
                label,
                p,
                s[p],
                *spread(vals),
                cpu(res, ("drain", p)),
                f"{gq / statistics.median(vals):.2f}x faster",
            )
        )

    label = f"dispatch p50 / p99 ms at {sz.rate:g}/s"
    gq99 = res.median(("dispatch", "genqueue alarm"), "p99_ms")
    systems = [("genqueue alarm", "genqueue", "alarm dispatch")]
    for p in peers:
        systems += [(f"{p}, polling {k}", p, f"polling {k}") for k in ("default", "10 ms", "1 ms")]
    for key, system, setting in systems:
        p50s, p99s = (
            res.values(("dispatch", key), "p50_ms"),
            res.values(("dispatch", key), "p99_ms"),
        )
        cells = [f"{a} / {b}" for a, b in zip(spread(p50s, 2), spread(p99s, 2), strict=True)]
        vs = "1.00x" if system == "genqueue" else f"{gq99 / statistics.median(p99s):.3f}x p99"
        out.append(row(label, system, setting, *cells, cpu(res, ("dispatch", key)), vs))

    ideal = sz.long_sleep_s * -(-sz.long_jobs // sz.long_concurrency)
    long_settings = {
        "genqueue": f"asyncio processor, max_concurrency {sz.long_concurrency}",
        "Huey": f"{sz.long_concurrency} thread workers, time.sleep",
        "arq": f"max_jobs {sz.long_concurrency}, poll every 0.01 s, asyncio.sleep",
    }
    what = f"{sz.long_jobs:,} jobs of {sz.long_sleep_s:g} s at concurrency {sz.long_concurrency}"
    for measure, name, digits in [
        (f"{what}: wall s (ideal {ideal:g} s)", "wall_s", 2),
        (f"{what}: peak OS threads", "peak_threads", 0),
        (f"{what}: peak RSS MB", "peak_rss_mb", 0),
    ]:
        for system in ["genqueue", *peers]:
            vals = res.values(("long", system), name)
            if name == "wall_s":
                vs = f"{100 * (statistics.median(vals) / ideal - 1):+.0f}% over ideal"
            else:
                vs = ""
            cells = spread(vals, digits)
            use = cpu(res, ("long", system)) if name == "wall_s" else ""
            out.append(row(measure, system, long_settings[system], *cells, use, vs))
    return out


def modes_table(res: Results) -> list[str]:
    sz = res.sizes
    out = [
        row(
            "dispatch",
            "the plan's matrix says",
            f"drain {sz.drain_jobs:,} jobs/s (min / median / max)",
            "start delay p50 / p99 ms (median)",
            "p99 min - max",
            f"max_concurrency 1, {sz.fifo_jobs} jobs: most at once",
            "started in submit order",
        ),
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for mode in ("immediate", "cron", "alarm"):
        key = f"genqueue {mode}"
        p99 = res.values(("dispatch", key), "p99_ms")
        fifo = res.runs.get(("fifo", key), [])
        in_order = sum(1 for f in fifo if f["out_of_place"] == 0 and f["started"] == sz.fifo_jobs)
        setting = f" (a pass every {0.05:g} s)" if mode == "cron" else ""
        out.append(
            row(
                f"`{mode}`{setting}",
                PLAN[mode],
                " / ".join(spread(res.values(("drain", key), "rate"))),
                f"{num(res.median(('dispatch', key), 'p50_ms'), 2)} / "
                f"{num(statistics.median(p99), 2)}",
                f"{num(min(p99), 2)} - {num(max(p99), 2)}",
                str(max(f["peak_in_flight"] for f in fifo)),
                f"{in_order} of {len(fifo)} rounds",
            )
        )
    return out


def restart_table(res: Results) -> list[str]:
    r, n = res.restart, res.sizes.restart_jobs
    return [
        row("restart with queued jobs", "min s", "median s", "max s"),
        "|---|---:|---:|---:|",
        row(
            f"genqueue: `open()` → {n:,} queued answered → a submit acked", *spread(r["ready_s"], 3)
        ),
        row("baseline: raw sqlite3 SELECT of the same pending rows", *spread(r["raw_s"], 3)),
    ]


def goals(res: Results) -> list[str]:
    sz, peers = res.sizes, ["Huey", "arq"] if res.has_arq else ["Huey"]
    drain = res.median(("drain", "genqueue alarm"), "rate") / res.median(("drain", "Huey"), "rate")
    gq99 = res.median(("dispatch", "genqueue alarm"), "p99_ms")
    tuned = {
        p: min(res.median(("dispatch", f"{p}, polling {k}"), "p99_ms") for k in ("10 ms", "1 ms"))
        for p in peers
    }
    ideal = sz.long_sleep_s * -(-sz.long_jobs // sz.long_concurrency)
    over = {s: res.median(("long", s), "wall_s") / ideal - 1 for s in ["genqueue", *peers]}
    slowest = max(res.restart["ready_s"])

    def met(ok: bool) -> str:
        return "**met**" if ok else "**not met**"

    peer99 = ", ".join(f"{p} {num(v, 2)} ms" for p, v in tuned.items())
    peer_over = ", ".join(f"{p} {100 * over[p]:+.0f}%" for p in peers)
    return [
        f"- drain at least 3x Huey's best: {drain:.2f}x, {met(drain >= 3)}.",
        f"- dispatch p99 below both peers' tuned settings: genqueue {num(gq99, 2)} ms; best "
        f"tuned {peer99}: {met(all(gq99 < v for v in tuned.values()))}.",
        f"- long-running overhead below the peers': genqueue {100 * over['genqueue']:+.0f}% over "
        f"ideal; {peer_over}: {met(all(over['genqueue'] < over[p] for p in peers))}.",
        f"- restart with {sz.restart_jobs:,} queued jobs under 3 s: slowest round "
        f"{slowest:.3f} s, {met(slowest < 3)}.",
    ]


def notes(res: Results) -> list[str]:
    out = list(res.notes)
    for peer, rates in res.calibration.items():
        tried = ", ".join(f"{k}: {num(v)}/s" for k, v in rates.items())
        out.append(f"{peer}'s drain calibration ({res.sizes.calibration_jobs:,} jobs): {tried}.")
    if res.redis_version:
        rss = (
            f", peak RSS {num(res.redis_rss_mb or 0)} MB over the whole run"
            if res.redis_rss_mb
            else ""
        )
        out.append(
            f"arq ran against redis-server {res.redis_version} on loopback, its own process "
            f"(`--appendonly yes --appendfsync always --save ''`{rss}; not in arq's figures)."
        )
    early = {
        k[1]: sum(int(r.get("early", 0)) for r in v)
        for k, v in res.runs.items()
        if k[0] == "dispatch"
    }
    if any(early.values()):
        out.append(f"Called before the submit call returned (counted as 0 ms): {early}.")
    out.append(
        "CPU s: user + system time of the measured process (Huey's forked workers included) "
        "during one run, median of the rounds; for arq, redis-server's is added after it."
    )
    out.append(
        "genqueue vs this: for the drain, genqueue's rate ÷ this one's; for dispatch, genqueue's "
        "p99 ÷ this one's (below 1: genqueue's is shorter)."
    )
    out.append(f"Total run {res.total_s:.0f} s.")
    return ["- " + n for n in out]


def render(res: Results) -> str:
    sz = res.sizes
    lines = [
        f"## Side by side: genqueue, Huey{', arq' if res.has_arq else ''} "
        f"({sz.rounds} round{'s' * (sz.rounds > 1)}, {res.machine})",
        "",
        *peers_table(res),
        "",
        "The plan's comparison matrix, measured (genqueue's dispatch modes, max_concurrency "
        "256 for the drain; start delay at the rate above):",
        "",
        *modes_table(res),
        "",
        *restart_table(res),
        "",
        "Goals (issue #7, medians of the rounds):",
        "",
        *goals(res),
        "",
        "Notes:",
        "",
        *notes(res),
    ]
    return "\n".join(lines)
