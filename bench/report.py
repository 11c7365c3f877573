"""The results table (Markdown), as the README's Performance section shows it."""

from __future__ import annotations

from typing import Any


def _ms(x: float | None) -> str:
    return "–" if x is None else f"{x * 1000:.1f} ms"


def _s(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f} s"


def _get(d: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return None
        d = d[key]
    return d


def table(r: dict[str, Any]) -> str:
    m = r["machine"]
    rows: list[tuple[str, str, str, str]] = []
    ch = _get(r, "vm", "channel") or {}
    for size in ("1", "4", "16"):
        ours, raw = _get(ch, "ours", size, "median"), _get(ch, "raw", size, "median")
        if ours is None or raw is None:
            continue
        mbps = int(size) / ours
        rows.append((f"set_vars {size} MiB", f"{_ms(ours)} ({mbps:.0f} MiB/s)",
                     f"raw echo {_ms(raw)}: ours at {raw / ours:.2f}× the ceiling", "≥ 0.8× raw" if size == "16" else ""))
    seed = ch.get("seed") or {}
    if seed and _get(ch, "ours", "16", "median"):
        # The seed's channel is measured on a smaller transfer (minutes per MiB) and scaled linearly.
        size_key = max(seed, key=lambda k: float(k) if k != "0" else 0.25)
        seed_mib = 0.25 if size_key == "0" else float(size_key)
        seed_rate = seed_mib / seed[size_key]["median"]
        ours16 = ch["ours"]["16"]["median"]
        rows.append(("seed framing on the UART", f"{seed_rate * 1024:.1f} KiB/s ({seed_mib:g} MiB in {_s(seed[size_key]['median'])})",
                     f"ours at {16 / ours16 / seed_rate:.0f}× the seed (16 MiB, seed scaled linearly)", "≥ 300×"))
    ex = _get(r, "vm", "exec") or {}
    if ex:
        rows.append(("exec `pass` round trip", _ms(_get(ex, "exec_pass", "median")), f"min {_ms(_get(ex, 'exec_pass', 'min'))}", "≤ 1 ms"))
        rows.append(("new session (open)", _ms(_get(ex, "new_session", "median")),
                     f"+ first block {_ms(_get(ex, 'new_session_first_exec', 'median'))}, close {_ms(_get(ex, 'close_session', 'median'))}; back to back", "≤ 5 ms"))
        if _get(ex, "new_session_after_pause") is not None:
            rows.append(("new session after a 0.2 s pause", _ms(_get(ex, "new_session_after_pause", "median")),
                         f"+ first block {_ms(_get(ex, 'new_session_after_pause_first_exec', 'median'))}", "≤ 5 ms"))
        for n in (1, 8, 64):
            c = ex.get(f"concurrent_{n}")
            if c:
                rows.append((f"{n} concurrent sessions", f"{_s(c['wall'])}, {c['errors']} errors",
                             f"{c['blocks_each']} blocks × 4 host calls each, {c['blocks_per_s']} blocks/s", "no error" if n == 64 else ""))
    boot = r.get("boot") or {}
    if boot:
        cold = _get(boot, "cold", "runs")
        detail = ""
        if cold:
            b = cold[0]["breakdown"]
            detail = ", ".join(f"{k} {b[k]:.2f}" for k in ("firmware", "kernel", "modules", "switch_root", "userspace", "agent_import", "agent") if b.get(k) is not None)
        rows.append(("cold boot to ready", _s(_get(boot, "cold", "median_ready")), detail, "≤ 3 s"))
        rows.append(("restore from snapshot to ready", _s(_get(boot, "restore", "median_ready")),
                     f"first exec after restore {_s(_get(boot, 'restore', 'median_first_exec'))}; prepare_vm_config {_ms(boot.get('prepare_vm_config'))}", "≤ 0.2 s"))
    en = r.get("engine") or {}
    if en:
        o, s = en.get("ours", {}), en.get("rlms", {})
        ratio = en.get("ratio_ours_over_rlms", {})
        def cmp(key: str) -> str:
            return f"rlms {_ms(s.get(key)) if key == 'step_overhead' else _s(s.get(key))}; ours/rlms {ratio.get(key, '–')}"
        rows.append(("host time per step (no model latency)", _ms(o.get("step_overhead")), cmp("step_overhead"), "≤ 5 ms"))
        parts = o.get("step_parts")
        if parts and o.get("step_overhead") is not None:
            rest = o["step_overhead"] - parts["engine"] - parts["exec"]
            rows.append(("… of which (medians)", f"engine {_ms(parts['engine'])}",
                         f"guest exec round trip {_ms(parts['exec'])}; HTTP client and server {_ms(max(rest, 0.0))}", ""))
        rows.append(("`rlm run` start to first request (16 MiB)", _s(o.get("start_to_first_request")), cmp("start_to_first_request"), "≤ rlms"))
        pdf = en.get("pdf") or {}
        if "skipped" in pdf:
            rows.append(("PDF (1221 pages) start to first request", "skipped", pdf["skipped"], "≤ 0.33× pdftotext"))
        elif pdf:
            rows.append(("PDF (1221 pages) start to first request", _s(pdf["start_to_first_request"]),
                         f"pdftotext alone {_s(pdf['pdftotext'])}; ours/pdftotext {pdf['ratio']}", "≤ 0.33× pdftotext"))
        rows.append(("8 batched children, 1 s latency", _s(o.get("children_8")), cmp("children_8"), "≤ 1.1 s"))
        rows.append(("8 batched leaf calls, 1 s latency", _s(o.get("leaves_8")), cmp("leaves_8"), ""))
        big, small = o.get("fanout_16mib"), o.get("fanout_64kib")
        if big is not None and small is not None:
            rows.append(("8 children over 16 MiB in 8 pieces, no latency", _s(big),
                         f"same over 64 KiB {_s(small)}: +{big - small:.2f} s", "≤ +0.2 s"))
    head = (f"{r['date']}, {m['cores']} cores, accel {m['accel']}, load average {m['load_average_at_start'][0]:.1f} at start"
            f"{' (--quick)' if r.get('quick') else ''}; rlms {en.get('rlms_version', '–')}\n\n")
    lines = ["| workload | ours | beside it | goal |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return head + "\n".join(lines)
