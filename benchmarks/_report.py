"""One markdown table (plus notes) from the collected per-system results.

Rows are metrics, columns are systems. The floor column is the floor measured
in the first DreamLake column's processes; DreamLake cells show their ratio to
that floor, peer cells their ratio to the first DreamLake column.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["render"]

#: the naive synchronous JSONL writer's column: DreamLake latency cells show their ratio to it too
NAIVE = "naive-jsonl"


@dataclass(frozen=True)
class Metric:
    label: str
    workload: str
    path: str  # dotted path into the workload's result
    fmt: Callable[[float], str]
    floor_path: str | None = None  # same metric measured on the floor / unlogged loop
    ratio: bool = True  # show ratios (off where a ratio means nothing)
    budget: str = ""  # DESIGN.md §7 budget, checked on the first DreamLake column
    check: Callable[[float, dict], bool] | None = None


def _us(ns: float) -> str:
    us = ns / 1000.0
    return f"{us:.2f}" if us < 10 else f"{us:.1f}" if us < 100 else f"{us:,.0f}"


def _ms(ms: float) -> str:
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _mb(b: float) -> str:
    return f"{b / 2**20:.1f}"


def _rate(r: float) -> str:
    return f"{r / 1e6:.2f} M/s" if r >= 1e6 else f"{r / 1e3:.1f} k/s" if r >= 1e3 else f"{r:.0f} /s"


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


def _pct(x: float) -> str:
    return f"{x:+.2f} %" if abs(x) < 10 else f"{x:+.0f} %"


def _int(x: float) -> str:
    return f"{x:,.0f}"


METRICS: list[Metric] = [
    Metric("W1 append p50 (µs)", "W1", "latency_ns.p50", _us, "floor_ns.p50", budget="≤ 1 µs", check=lambda v, r: v <= 1000),
    Metric("W1 append p99 (µs)", "W1", "latency_ns.p99", _us, "floor_ns.p99"),
    Metric("W1 append p99.9 (µs)", "W1", "latency_ns.p99.9", _us, "floor_ns.p99.9", budget="≤ 20 µs", check=lambda v, r: v <= 20_000),
    Metric("W1 append p99.99 (µs)", "W1", "latency_ns.p99.99", _us, "floor_ns.p99.99"),
    Metric("W1 append max (µs)", "W1", "latency_ns.max", _us, "floor_ns.max"),
    Metric("W1 flush after loop (ms)", "W1", "flush_ms", _ms),
    Metric("W1 bytes/row", "W1", "bytes_per_row", _num),
    Metric("W1 peak RSS (MB)", "W1", "peak_rss_bytes", _mb),
    Metric("W2 robot lists/arrays p50 (µs)", "W2", "latency_ns.p50", _us, "floor_ns.p50", budget="≤ 1 µs", check=lambda v, r: v <= 1000),
    Metric("W2 robot lists/arrays p99 (µs)", "W2", "latency_ns.p99", _us, "floor_ns.p99"),
    Metric("W2 robot lists/arrays p99.9 (µs)", "W2", "latency_ns.p99.9", _us, "floor_ns.p99.9", budget="≤ 2× floor",
           check=lambda v, r: v <= 2 * r["floor_ns"]["p99.9"]),
    Metric("W2 robot lists/arrays p99.99 (µs)", "W2", "latency_ns.p99.99", _us, "floor_ns.p99.99"),
    Metric("W2 robot lists/arrays max (µs)", "W2", "latency_ns.max", _us, "floor_ns.max", budget="≤ naive max"),
    Metric("W2 flush after loop (ms)", "W2", "flush_ms", _ms),
    Metric("W2 bytes/tick", "W2", "bytes_per_tick", _num),
    Metric("W2 peak RSS (MB)", "W2", "peak_rss_bytes", _mb),
    Metric("W2s robot scalars p50 (µs)", "W2s", "latency_ns.p50", _us, "floor_ns.p50", budget="≤ 1 µs", check=lambda v, r: v <= 1000),
    Metric("W2s robot scalars p99.9 (µs)", "W2s", "latency_ns.p99.9", _us, "floor_ns.p99.9", budget="≤ 20 µs", check=lambda v, r: v <= 20_000),
    Metric("W2s robot scalars max (µs)", "W2s", "latency_ns.max", _us, "floor_ns.max"),
    Metric("W2k p50 plain floats row (µs)", "W2k", "plain.p50", _us),
    Metric("W2k p50 numpy scalars (× plain row)", "W2k", "ratio_p50.numpy_scalars", lambda x: f"{x:.2f}", ratio=False, budget="≤ 2",
           check=lambda v, r: v <= 2),
    Metric("W2k p50 7-float list (× plain row)", "W2k", "ratio_p50.list7", lambda x: f"{x:.2f}", ratio=False, budget="≤ 2",
           check=lambda v, r: v <= 2),
    Metric("W2k p50 7-float array (× plain row)", "W2k", "ratio_p50.array7", lambda x: f"{x:.2f}", ratio=False, budget="≤ 2",
           check=lambda v, r: v <= 2),
    Metric("W2k p50 short strings (× plain row)", "W2k", "ratio_p50.short_str", lambda x: f"{x:.2f}", ratio=False, budget="≤ 2",
           check=lambda v, r: v <= 2),
    Metric("W3 1 kHz loop slowdown (% of period)", "W3", "slowdown_pct", _pct, ratio=False, budget="< 2 %",
           check=lambda v, r: v < 2.0),
    Metric("W3 1 kHz step time p99 (µs)", "W3", "paced.logged.p99_ns", _us, "paced.base.p99_ns"),
    Metric("W3 1 kHz missed deadlines", "W3", "paced.logged.missed", _int, "paced.base.missed", ratio=False),
    Metric("W3 CPU-bound loop slowdown (%)", "W3", "cpu_slowdown_pct", _pct, ratio=False),
    Metric("W4 append() rows/s", "W4", "row.rows_per_s", _rate, budget="≥ 1 M/s", check=lambda v, r: v >= 1e6),
    Metric("W4 append_batch(1000) rows/s", "W4", "batch.rows_per_s", _rate, budget="≥ 1 M/s", check=lambda v, r: v >= 1e6),
    Metric("W4 flush wait, append() (ms)", "W4", "row.flush_ms", _ms),
    Metric("W4 bytes/row", "W4", "row.bytes_per_row", _num),
    Metric("W4 peak RSS (MB)", "W4", "peak_rss_bytes", _mb),
    Metric("W5 track rows", "W5", "track_rows", _int, ratio=False),
    Metric("W5 tail 100 rows, 1st read (ms)", "W5", "tail_first_ms", _ms, budget="< 10 ms", check=lambda v, r: v < 10),
    Metric("W5 tail 100 rows, median (ms)", "W5", "tail_median_ms", _ms, budget="< 10 ms", check=lambda v, r: v < 10),
    Metric("W5 _ts range 100 rows, median (ms)", "W5", "range_median_ms", _ms),
    Metric("W5 build rows/s (append_batch)", "W5", "build_rows_per_s", _rate),
    Metric("W5 bytes/row", "W5", "bytes_per_row", _num),
    Metric("W6 drop: peak RSS Δ (MB)", "W6", "drop.rss_peak_delta_bytes", _mb, ratio=False, budget="≤ budget",
           check=lambda v, r: v <= r["drop"]["budget_bytes"]),
    Metric("W6 drop: health()['dropped']", "W6", "drop.dropped", _int, ratio=False),
    Metric("W6 drop: rows not written", "W6", "drop.missing", _int, ratio=False),
    Metric("W6 drop: producer rows/s", "W6", "drop.produce_rows_per_s", _rate, ratio=False),
    Metric("W6 block: peak RSS Δ (MB)", "W6", "block.rss_peak_delta_bytes", _mb, ratio=False, budget="≤ budget",
           check=lambda v, r: v <= r["block"]["budget_bytes"]),
    Metric("W6 block: rows lost", "W6", "block.missing", _int, ratio=False, budget="0", check=lambda v, r: v == 0),
    Metric("W6 block: producer rows/s", "W6", "block.produce_rows_per_s", _rate, ratio=False),
]


def _get(d: Any, path: str) -> Any:
    for part in _split(path):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _split(path: str) -> list[str]:
    # "latency_ns.p99.9" -> ["latency_ns", "p99.9"]: a percentile key keeps its dot
    out: list[str] = []
    for part in path.split("."):
        if out and out[-1].startswith("p") and out[-1][1:].isdigit() and part.isdigit():
            out[-1] += "." + part
        else:
            out.append(part)
    return out


def _ratio(x: float, base: float) -> str:
    if not base or not math.isfinite(x) or not math.isfinite(base):
        return ""
    r = x / base
    return f"×{r:,.0f}" if r >= 100 else f"×{r:.1f}" if r >= 1 else f"×{r:.2f}"


def _cell(sys_res: dict, m: Metric) -> tuple[str, Any]:
    """(text, numeric value or None) of one system's metric."""
    if sys_res.get("status") == "skipped":
        return "skipped", None
    w = sys_res.get("workloads", {}).get(m.workload)
    if w is None:
        return "–", None
    if w.get("status") == "n/a":
        return "n/a", None
    if w.get("status") != "ok":
        return "error", None
    head = _split(m.path)[0]
    sub = w.get(head)
    if isinstance(sub, dict) and sub.get("status") == "n/a":
        return "n/a", None
    v = _get(w, m.path)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return "–", None
    return m.fmt(v), v


def render(results: dict[str, dict], dl_columns: list[str], title: str = "") -> str:
    cols = list(results)
    ref = next((c for c in dl_columns if results.get(c, {}).get("status") == "ok"), None)
    header = ["metric", "floor"] + [_col_title(c, results[c]) for c in cols] + ["§7 budget"]
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    status = ["status", ""] + [_status(results[c]) for c in cols] + [""]
    lines.append("| " + " | ".join(status) + " |")
    for m in METRICS:
        row = [m.label]
        # floor (or unlogged loop) from the reference DreamLake process
        fv = None
        if ref and m.floor_path:
            w = results[ref]["workloads"].get(m.workload) or {}
            fv = _get(w, m.floor_path) if w.get("status") == "ok" else None
        row.append(m.fmt(fv) if isinstance(fv, (int, float)) else "")
        ref_v = _cell(results[ref], m)[1] if ref else None
        for c in cols:
            text, v = _cell(results[c], m)
            if v is not None and m.ratio:
                if c in dl_columns and fv:
                    r = _ratio(v, fv)
                    naive = _cell(results[NAIVE], m)[1] if NAIVE in results else None
                    rn = _ratio(v, naive) if naive and m.floor_path else ""
                    text += f" ({r} floor{'; ' + rn + ' naive' if rn else ''})" if r else ""
                elif c not in dl_columns and ref_v:
                    r = _ratio(v, ref_v)
                    text += f" ({r})" if r else ""
            row.append(text)
        verdict = ""
        if m.budget:
            verdict = m.budget
            if ref and m.check and ref_v is not None:
                try:
                    ok = m.check(ref_v, results[ref]["workloads"][m.workload])
                    verdict += " ✓" if ok else " ✗"
                except (KeyError, TypeError):
                    pass
        row.append(verdict)
        lines.append("| " + " | ".join(row) + " |")
    lines += [""] + _notes(results, dl_columns, ref)
    return "\n".join(lines)


def _col_title(col: str, res: dict) -> str:
    v = res.get("version")
    return f"{col} {v}" if v and not col.startswith("dreamlake") else col


def _status(res: dict) -> str:
    st = res.get("status", "?")
    if st != "ok":
        return st
    bad = [w for w, r in res.get("workloads", {}).items() if r.get("status") == "error"]
    return f"error: {','.join(bad)}" if bad else "ok"


def _notes(results: dict[str, dict], dl_columns: list[str], ref: str | None) -> list[str]:
    notes = []
    if ref:
        timer = _get(results[ref]["workloads"].get("W1") or {}, "timer_ns")
        notes.append(
            f"- floor: a bare method taking **kwargs that appends to a deque, timed the same way in the {ref} processes"
            + (f" (timer overhead ≈ {timer} ns per sample, included everywhere)" if timer is not None else "")
            + f"; DreamLake cells show ×floor, peer cells show peer ÷ {ref} (latency/time: lower is better; rows/s: higher is better)."
        )
        notes.append("- W3 floor column: the same loop unlogged, in blocks alternating with the logged ones. Slowdown = "
                     "extra mean step time ÷ 1 ms period (a step runs from its scheduled start, so late wake-ups "
                     "waiting for the GIL count); CPU-bound = the same steps back to back, no sleep.")
        if any("remote" in c for c in dl_columns):
            notes.append("- dreamlake[remote]: Session(url=...) into a dreamlake-server the runner started on loopback "
                         "(local store, --no-fsync, pinned to the last CPU, so it shares a core with the benchmark); "
                         "×floor uses the same floor as the other DreamLake columns; its peak RSS is the client's "
                         "only; rows are read back from the server.")
        if any("agent" in c for c in dl_columns):
            notes.append("- dreamlake[agent]: peak RSS is the client process's plus the agent process's "
                         "(started by agent=\"auto\" on a private socket; its peak so far, VmHWM).")
        if NAIVE in results:
            notes.append(f"- {NAIVE}: the baseline, a synchronous JSONL writer (json.dumps + a buffered write per "
                         "call, on the caller's thread); DreamLake latency cells also show their ratio to it.")
        notes.append("- W2: a robot tick with an explicit _ts on each call: a list of 7 floats, a numpy array of "
                     "7 floats, a small dict; W2s: the same tick as scalar fields with _ts=-1. W2k: one append per "
                     "row kind, p50 as a multiple of the plain-float row's in the same process.")
        notes.append("- capped: a system far slower than the sizes assume stops at a time cap per loop "
                     "(or its own row cap); the figures cover the calls it made.")
    for c, res in results.items():
        if res.get("status") == "skipped":
            notes.append(f"- {c}: skipped — {res.get('reason', '')}")
            continue
        if res.get("status") == "error":
            notes.append(f"- {c}: error — {res.get('reason', '')}")
            continue
        for w, r in res.get("workloads", {}).items():
            if r.get("status") == "n/a":
                notes.append(f"- {c} {w}: n/a — {r.get('reason', '')}")
            elif r.get("status") == "error":
                notes.append(f"- {c} {w}: error — {r.get('reason', '')}")
            elif w == "W4" and isinstance(r.get("batch"), dict) and r["batch"].get("status") == "n/a":
                notes.append(f"- {c} W4 batch: n/a — {r['batch'].get('reason', '')}")
            if r.get("status") == "ok":
                notes += _capped(c, w, r, res.get("sizes", {}))
        if c in dl_columns:
            notes += _anomalies(c, res)
    return notes


def _capped(col: str, w: str, r: dict, sizes: dict) -> list[str]:
    asked = {"W1": ("calls", "w1_calls"), "W2": ("ticks", "w2_ticks"), "W2s": ("ticks", "w2_ticks")}
    out = []
    if w in asked:
        got, want = r.get(asked[w][0]), sizes.get(asked[w][1])
        if got is not None and want and got < want:
            out.append(f"- {col} {w}: capped at {got:,} of {want:,} (percentiles over those)")
    if w == "W4":
        for k in ("row", "batch"):
            got, want = _get(r, f"{k}.rows"), sizes.get("w4_rows")
            if isinstance(got, int) and want and got < want:
                out.append(f"- {col} W4 {k}: capped at {got:,} of {want:,} rows")
    if w == "W5":
        got, want = r.get("track_rows"), sizes.get("w5_rows")
        if isinstance(got, int) and want and got < want:
            out.append(f"- {col} W5: capped at {got:,} of {want:,} rows")
    if w == "W3":
        logged = _get(r, "cpu.logged.steps")
        if isinstance(logged, int) and sizes.get("w3_cpu_steps") and logged < sizes["w3_cpu_steps"]:
            out.append(f"- {col} W3 CPU-bound: capped at {logged:,} steps")
    return out


def _anomalies(col: str, res: dict) -> list[str]:
    """DreamLake results that look wrong: lost rows, errors, drops outside W6."""
    out = []
    ws = res.get("workloads", {})
    expect = {
        "W1": [("calls", "rows_on_disk")],
        "W4": [("row.rows", "row.rows_on_disk"), ("batch.rows", "batch.rows_on_disk")],
    }
    for w, pairs in expect.items():
        r = ws.get(w) or {}
        if r.get("status") != "ok":
            continue
        for want_p, got_p in pairs:
            want, got = _get(r, want_p), _get(r, got_p)
            if isinstance(want, int) and got != want:
                out.append(f"- {col} {w}: {want_p}={want:,} but read back {got!r}")
    for w2 in ("W2", "W2s"):
        r2 = ws.get(w2) or {}
        if r2.get("status") == "ok" and isinstance(r2.get("rows_on_disk"), dict):
            for track, n in r2["rows_on_disk"].items():
                if n != r2.get("ticks"):
                    out.append(f"- {col} {w2}: {track} has {n!r} rows for {r2.get('ticks'):,} ticks")
    for w, key in (("W1", "max_at_call"), ("W2", "max_at_tick"), ("W2s", "max_at_tick")):
        r = ws.get(w) or {}
        mx = _get(r, "latency_ns.max")
        if r.get("status") == "ok" and isinstance(mx, int) and mx > 1_000_000:
            out.append(f"- {col} {w}: slowest append took {mx / 1e6:.1f} ms (at {key.split('_')[-1]} {r.get(key)})")
    r5 = ws.get("W5") or {}
    if r5.get("status") == "ok":
        for k in ("tail_rows", "range_rows"):
            if r5.get(k) != 100:
                out.append(f"- {col} W5: {k}={r5.get(k)!r}, expected 100")
    for w, r in ws.items():
        for h in _healths(r):
            if not isinstance(h, dict):
                continue
            errors = h.get("write_errors", h.get("writeErrors"))
            if errors:
                last = h.get("last_error", h.get("lastError"))
                out.append(f"- {col} {w}: health write errors={errors} last error={last!r}")
            if h.get("dropped") and w != "W6":
                out.append(f"- {col} {w}: health dropped={h['dropped']}")
    r6 = ws.get("W6") or {}
    if r6.get("status") == "ok":
        for pol in ("drop", "block"):
            p = r6.get(pol) or {}
            if p.get("rows_in_file") is not None and p.get("rows_in_file") != p.get("rows_read_back"):
                out.append(f"- {col} W6 {pol}: {p.get('rows_in_file')} lines in data.jsonl but read API says {p.get('rows_read_back')}")
            if pol == "drop" and isinstance(p.get("missing"), int) and p.get("dropped") != p["missing"]:
                out.append(f"- {col} W6 drop: health()['dropped']={p.get('dropped')!r} but {p['missing']:,} "
                           f"of {p.get('produced', 0):,} rows are not in the track")
            delta, budget = p.get("rss_peak_delta_bytes"), p.get("budget_bytes")
            if isinstance(delta, int) and budget and delta > budget:
                out.append(f"- {col} W6 {pol}: peak RSS grew {delta / 2**20:.1f} MB under a "
                           f"{budget / 2**20:.0f} MB memory_budget ({p.get('row_bytes')} B rows)")
    return out


def _healths(r: dict) -> list:
    hs = [r.get("health")]
    for k in ("row", "batch", "drop", "block"):
        if isinstance(r.get(k), dict):
            hs.append(r[k].get("health"))
    return hs
