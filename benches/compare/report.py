"""Tables, goal checks and SVG charts built from the results dict of one run.

Every ratio is against the native directory and higher is better: a throughput ratio is
target / native, and a time ratio (for fixed work) is native time / target time.
"""

import math
from html import escape

RATE, TIME = "rate", "time"
DUALFS_TARGETS = ("dualfs-sync", "dualfs-async")
LAG_ORDER = ("dualfs-sync", "dualfs-async", "lsyncd")
MODE_ORDER = ("sync", "async")
STATE_ORDER = ("healthy", "slow", "hung")
WORKLOAD_ORDER = (
    "seqwrite", "seqread", "randread", "randwrite", "smallfiles", "statwalk", "unpack",
)


def _ordered(mapping, order):
    """Return the items of `mapping` in `order`, then any other keys in their own order.

    JSON files store keys sorted, so the report puts them back in the order of the run."""
    known = [(key, mapping[key]) for key in order if key in mapping]
    return known + [(key, value) for key, value in mapping.items() if key not in order]


def lag_items(results):
    return _ordered(results.get("lag", {}), LAG_ORDER)


def latency_items(results):
    """Yield (mode, state, record) of the write latency runs in the order of the run."""
    for mode, states in _ordered(results.get("latency", {}), MODE_ORDER):
        for state, record in _ordered(states, STATE_ORDER):
            yield mode, state, record


def ratio_metrics(config):
    seq = f"{config['seq_size_mib']} MiB"
    walk = f"{config['walk_files']:,}"
    small = f"{config['small_files']:,}"
    return [
        # label, workload, field, kind, unit
        (f"seq write {seq} + fsync", "seqwrite", "mib_s", RATE, "MiB/s"),
        (f"seq write {seq} to both trees", "seqwrite", "both_seconds", TIME, "s"),
        (f"seq read {seq}, cold", "seqread", "cold_mib_s", RATE, "MiB/s"),
        (f"seq read {seq}, page-cached", "seqread", "warm_mib_s", RATE, "MiB/s"),
        ("4 KiB random read", "randread", "iops", RATE, "IOPS"),
        ("4 KiB random write", "randwrite", "iops", RATE, "IOPS"),
        (f"create {small} files of 4 KiB", "smallfiles", "files_s", RATE, "files/s"),
        (f"stat walk {walk} files, cold", "statwalk", "cold_entries_s", RATE, "entries/s"),
        (f"stat walk {walk} files, warm", "statwalk", "warm_entries_s", RATE, "entries/s"),
        ("unpack crates (tar -x)", "unpack", "seconds", TIME, "s"),
    ]


def _value(results, workload, target, field):
    record = results["throughput"].get(workload, {}).get(target)
    if not record or "error" in record:
        return None
    return record.get(field)


def ratio(results, workload, target, field, kind, baseline="native"):
    value = _value(results, workload, target, field)
    base = _value(results, workload, baseline, field)
    if not value or not base:
        return None
    return value / base if kind == RATE else base / value


def _format_number(value, unit):
    if value is None:
        return "–"
    if unit == "s":
        return f"{value:.2f} s"
    if value >= 100:
        return f"{value:,.0f} {unit}"
    return f"{value:.1f} {unit}"


def _format_ratio(value):
    # Two significant digits keep ratios far below 1 (0.0047x) from printing as 0.00x.
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.2g}x"


def _table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _error_cell(results, workload, target):
    record = results["throughput"].get(workload, {}).get(target)
    if record and "error" in record:
        return "failed"
    return "–"


def ratio_table(results, targets):
    rows = []
    for label, workload, field, kind, _unit in ratio_metrics(results["config"]):
        if workload not in results["throughput"]:
            continue
        row = [label]
        for target in targets:
            value = ratio(results, workload, target, field, kind)
            row.append(_format_ratio(value) if value is not None
                       else _error_cell(results, workload, target))
        rows.append(row)
    return _table(["workload", *targets], rows)


def absolute_table(results, targets):
    rows = []
    for label, workload, field, _kind, unit in ratio_metrics(results["config"]):
        if workload not in results["throughput"]:
            continue
        row = [label]
        for target in targets:
            value = _value(results, workload, target, field)
            row.append(_format_number(value, unit) if value is not None
                       else _error_cell(results, workload, target))
        rows.append(row)
    return _table(["workload", *targets], rows)


def spread_table(results, targets):
    """Lowest and highest value of each repeated measurement, next to the median shown above."""
    rows = []
    for label, workload, field, _kind, unit in ratio_metrics(results["config"]):
        per_target = results["throughput"].get(workload, {})
        if not any("runs" in record for record in per_target.values()):
            continue
        row = [label]
        for target in targets:
            values = [run[field] for run in per_target.get(target, {}).get("runs", [])
                      if run.get(field) is not None]
            if values:
                low, high = min(values), max(values)
                row.append(f"{_format_number(low, unit)} – {_format_number(high, unit)} "
                           f"({len(values)} runs)")
            else:
                row.append("–")
        rows.append(row)
    return _table(["workload", *targets], rows) if rows else ""


def latency_detail_table(results, targets):
    """fio's completion latency percentiles of the random I/O jobs, in microseconds."""
    rows = []
    for workload in ("randread", "randwrite"):
        if workload not in results["throughput"]:
            continue
        for percentile in ("p50_us", "p99_us"):
            row = [f"{workload} {percentile[:3]}"]
            for target in targets:
                value = _value(results, workload, target, percentile)
                row.append(f"{value:.1f} µs" if value is not None else "–")
            rows.append(row)
    return _table(["latency", *targets], rows) if rows else ""


def dualfs_remote_table(results):
    """Return a table of the time until the remote tree has all data, next to the application's time."""
    rows = []
    specs = [
        ("seqwrite", "seconds", "both_seconds", "seq write + fsync"),
        ("smallfiles", "seconds", "synced_seconds", "create small files"),
        ("unpack", "seconds", "synced_seconds", "unpack crates"),
    ]
    for workload, app_field, synced_field, label in specs:
        for target in DUALFS_TARGETS:
            app = _value(results, workload, target, app_field)
            synced = _value(results, workload, target, synced_field)
            if app is None or synced is None:
                continue
            rows.append([label, target, f"{app:.2f} s", f"{synced:.2f} s"])
    if not rows:
        return ""
    return _table(["workload", "target", "application time", "until the remote holds it"], rows)


def memory_table(results, targets):
    daemons = [target for target in targets if target != "native"]
    rows = []
    for workload, per_target in _ordered(results["throughput"], WORKLOAD_ORDER):
        row = [workload]
        for target in daemons:
            record = per_target.get(target) or {}
            peak = record.get("rss_peak_kib")
            row.append(f"{peak / 1024:.0f}" if peak else "–")
        rows.append(row)
    if not rows:
        return ""
    return _table(["workload (peak RSS, MiB)", *daemons], rows)


def lag_table(results):
    rows = []
    for name, record in lag_items(results):
        if "error" in record:
            rows.append([name, "failed", "", "", "", ""])
            continue
        lag = record["lag"]
        write = record["write_close"]
        rows.append([
            name,
            f"{lag.get('p50_ms', float('nan')):.1f}",
            f"{lag.get('p99_ms', float('nan')):.1f}",
            f"{lag.get('max_ms', float('nan')):.1f}",
            f"{record['files'] - record['missing']}/{record['files']}",
            f"{write.get('p50_ms', float('nan')):.2f} / {write.get('p99_ms', float('nan')):.2f}",
        ])
    if not rows:
        return ""
    return _table(["mirror", "lag p50 (ms)", "lag p99 (ms)", "lag max (ms)", "arrived",
                   "write+close p50 / p99 (ms)"], rows)


def write_latency_table(results):
    rows = []
    for mode, state, record in latency_items(results):
        healthy = results["latency"][mode].get("healthy", {}).get("write_close", {}).get("p99_ms")
        if "error" in record:
            rows.append([mode, state, "failed", "", "", "", "", "", ""])
            continue
        stats = record["write_close"]
        relative = f"{stats['p99_ms'] / healthy:.2f}x" if healthy else "–"
        rows.append([
            mode, state, stats["count"], f"{stats['p50_ms']:.2f}", f"{stats['p99_ms']:.2f}",
            f"{stats['max_ms']:.1f}", record.get("over_1s", "–"), relative,
            record.get("remote_health", ""),
        ])
    if not rows:
        return ""
    return _table(["dualfs mode", "remote", "files", "p50 (ms)", "p99 (ms)", "max (ms)",
                   "writes over 1 s", "p99 / healthy p99", "remote health"], rows)


def inode_table(results):
    record = results.get("inodes")
    if not record:
        return ""
    if "error" in record:
        return f"The inode walk failed: {record['error']}"
    return _table(
        ["target", "files", "entries walked", "walk time", "RSS before walk", "peak RSS (VmHWM)",
         "RSS after walk"],
        [[record["target"], f"{record['files']:,}", f"{record['entries']:,}",
          f"{record['walk_seconds']:.1f} s", f"{record['rss_before_walk_kib'] / 1024:.0f} MiB",
          f"{record['rss_peak_kib'] / 1024:.0f} MiB", f"{record['rss_kib'] / 1024:.0f} MiB"]],
    )


# --- goals ---------------------------------------------------------------------------------------


def _at_least(name, target, measured, minimum, unit="x"):
    if measured is None:
        return [name, target, "not measured", f">= {minimum}{unit}", "–", ""]
    passed = measured >= minimum
    gap = "" if passed else f"{minimum / measured:.2f}x short"
    measured_text = _format_ratio(measured) if unit == "x" else f"{measured:.2f}{unit}"
    return [name, target, measured_text, f">= {minimum}{unit}",
            "pass" if passed else "miss", gap]


def _at_most(name, target, measured, maximum, unit, threshold_text=None):
    if measured is None:
        return [name, target, "not measured", threshold_text or f"<= {maximum}{unit}", "–", ""]
    passed = measured <= maximum
    gap = "" if passed else f"{measured / maximum:.2f}x over"
    return [name, target, f"{measured:.2f}{unit}", threshold_text or f"<= {maximum:g}{unit}",
            "pass" if passed else "miss", gap]


def goal_rows(results):
    """Check the performance goals; each row is goal, target, measured, threshold, result, gap."""
    rows = []
    present = [t for t in DUALFS_TARGETS if any(t in per for per in results["throughput"].values())
               or t in results.get("lag", {})]
    for target in present:
        for field, label in (("cold_mib_s", "cold"), ("warm_mib_s", "page-cached")):
            if "seqread" in results["throughput"]:
                rows.append(_at_least(f"seq read ({label}) vs native", target,
                                      ratio(results, "seqread", target, field, RATE), 0.95))
        if "seqwrite" in results["throughput"]:
            rows.append(_at_least("seq write to both trees vs native double write", target,
                                  ratio(results, "seqwrite", target, "both_seconds", TIME), 0.8))
        if "smallfiles" in results["throughput"]:
            rows.append(_at_least("small files vs mergerfs", target,
                                  ratio(results, "smallfiles", target, "files_s", RATE,
                                        baseline="mergerfs"), 1.0))
        if "statwalk" in results["throughput"]:
            rows.append(_at_least("warm stat walk vs native", target,
                                  ratio(results, "statwalk", target, "warm_entries_s", RATE), 0.8))
        lag = results.get("lag", {})
        if target in lag and "lag" in lag[target]:
            p99 = lag[target]["lag"].get("p99_ms")
            rows.append(_at_most("replication lag p99", target, p99, 1000.0, " ms"))
            lsyncd = lag.get("lsyncd", {}).get("lag", {}).get("p99_ms")
            if lsyncd is not None:
                rows.append(_at_most("replication lag p99 vs lsyncd", target, p99, lsyncd, " ms",
                                     f"< {lsyncd:.1f} ms (lsyncd p99)"))
    async_latency = results.get("latency", {}).get("async", {})
    healthy = async_latency.get("healthy", {}).get("write_close", {}).get("p99_ms")
    hung = async_latency.get("hung", {}).get("write_close", {}).get("p99_ms")
    if healthy and hung:
        rows.append(_at_most("write p99 with hung remote / healthy p99", "dualfs-async",
                             hung / healthy, 1.2, "x"))
    inode = results.get("inodes")
    if inode and "rss_peak_kib" in inode:
        rows.append(_at_most(f"daemon peak RSS after {inode['files']:,} cached inodes",
                             inode["target"], inode["rss_peak_kib"] / 1024, 128, " MiB"))
    return rows


def goals_table(results):
    rows = goal_rows(results)
    if not rows:
        return ""
    return _table(["goal", "target", "measured", "threshold", "result", "gap"], rows)


# --- the whole report ---------------------------------------------------------------------------


def _header_lines(results):
    machine = results["machine"]
    lines = [
        "# Workload comparison results",
        "",
        f"Run of {results['started']} ({results['duration_s'] / 60:.1f} min): "
        f"`{results['command']}`",
        "",
        f"Machine: {machine['cores']} cores ({machine['cpu']}), {machine['memory']} RAM, "
        f"kernel {machine['kernel']}, {machine['os']}. Work directory on {machine['disk']}.",
        "",
        "One run on a shared machine; every ratio compares measurements of the same run.",
        "",
    ]
    if results["config"].get("quick"):
        lines += ["**Quick run: reduced sizes, not comparable with a full run.**", ""]
    return lines


def targets_table(results, targets):
    versions = results.get("versions", {})
    commands = results.get("targets", {})
    rows = [[f"`{name}`", commands.get(name, ""), versions.get(name, "")] for name in targets]
    if results.get("lag"):
        rows.append(["`lsyncd`", "lsyncd with default.rsync, delay = 0, rsync archive = true",
                     versions.get("lsyncd", "")])
    return _table(["target", "command", "version"], rows)


def _failure_lines(results):
    lines = [
        f"- {workload} on {target}: {record['error']}"
        for workload, per_target in results["throughput"].items()
        for target, record in per_target.items() if "error" in record
    ]
    for name, record in lag_items(results):
        if "error" in record:
            lines.append(f"- lag on {name}: {record['error']}")
    for mode, state, record in latency_items(results):
        if "error" in record:
            lines.append(f"- latency {mode}/{state}: {record['error']}")
    return lines


def markdown(results, targets, chart_names):
    parts = _header_lines(results)

    sections = [
        ("Ratio to native (higher is better)", ratio_table(results, targets)),
        ("Absolute values (median where a workload ran several times)",
         absolute_table(results, targets)),
        ("Lowest and highest of the repeated runs", spread_table(results, targets)),
        ("Random I/O completion latency (fio clat)", latency_detail_table(results, targets)),
        ("dualfs: time until the remote holds the data", dualfs_remote_table(results)),
        ("Replication lag (close() until the remote copy has the same size and SHA-256)",
         lag_table(results)),
        ("Application write latency (open + 4 KiB write + close) with dualfs over faultfs",
         write_latency_table(results)),
        ("Daemon memory after many cached inodes", inode_table(results)),
        ("Peak RSS of the FUSE daemon per workload", memory_table(results, targets)),
        ("Goals", goals_table(results)),
        ("Targets", targets_table(results, targets)),
    ]
    for title, body in sections:
        if body:
            parts += [f"## {title}", "", body, ""]

    failures = _failure_lines(results)
    if failures:
        parts += ["## Failures", "", *failures, ""]
    notes = [
        f"- {workload} on {target}: {record['note']}"
        for workload, per_target in results["throughput"].items()
        for target, record in per_target.items() if record.get("note")
    ]
    if notes:
        parts += ["## Notes", "", *notes, ""]

    for name in chart_names:
        parts += [f"![{name}]({name})", ""]
    return "\n".join(parts)


# --- SVG charts ---------------------------------------------------------------------------------

PALETTE = {
    "dualfs-sync": "#1f4e9e",
    "dualfs-async": "#5b9bd5",
    "mergerfs": "#e07b39",
    "bindfs": "#8c8c8c",
    "fuse-overlayfs": "#6aa84f",
    "unionfs-fuse": "#b45f9e",
    "rclone": "#c9a227",
    "lsyncd": "#8c8c8c",
    "p50": "#5b9bd5",
    "p99": "#1f4e9e",
}


def _svg_document(width, height, body):
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">\n'
        f'<rect width="{width}" height="{height}" fill="white"/>\n' + "\n".join(body) + "\n</svg>\n"
    )


def _log_axis(low, high, left, width):
    span = math.log10(high) - math.log10(low)

    def position(value):
        value = min(max(value, low), high)
        return left + (math.log10(value) - math.log10(low)) / span * width

    return position


def _ticks(low, high):
    ticks = []
    decade = 10 ** math.floor(math.log10(low))
    while decade <= high:
        for step in (1, 2, 5):
            tick = step * decade
            if low <= tick <= high:
                ticks.append(tick)
        decade *= 10
    return ticks


def _nice_bounds(values):
    """Return the largest 1-2-5 step below min(values) and the smallest above max(values)."""
    steps = _ticks(10 ** math.floor(math.log10(min(values))) / 10,
                   10 ** math.ceil(math.log10(max(values))) * 10)
    low = max(step for step in steps if step <= min(values))
    high = min(step for step in steps if step >= max(values) * 1.15)
    return low, high


def _short_number(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _bar_chart(title, subtitle, groups, series, unit, reference=None, tick_unit=True):
    """Draw horizontal bars on a log axis: `groups` is [(label, {series: value})], and a group
    shows only the series that have a value in it."""
    values = [value for _, per in groups for value in per.values() if value]
    low, high = _nice_bounds(values + ([reference] if reference else []))
    left, right, top = 230, 70, 84
    bar, gap = 11, 12
    width = 900
    plot_width = width - left - right
    bars = sum(1 for _, per in groups for name in series if per.get(name))
    height = top + bars * bar + len(groups) * gap + 40
    x = _log_axis(low, high, left, plot_width)

    body = [
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14" '
        f'font-weight="bold">{escape(title)}</text>',
        f'<text x="{width / 2}" y="38" text-anchor="middle">{escape(subtitle)}</text>',
    ]
    legend_x = left
    for name in series:
        body.append(f'<rect x="{legend_x}" y="52" width="10" height="10" '
                    f'fill="{PALETTE.get(name, "#444")}"/>')
        body.append(f'<text x="{legend_x + 14}" y="61">{escape(name)}</text>')
        legend_x += 14 + 7 * len(name) + 14

    bottom = height - 30
    for tick in _ticks(low, high):
        position = x(tick)
        body.append(f'<line x1="{position:.1f}" y1="{top - 6}" x2="{position:.1f}" '
                    f'y2="{bottom}" stroke="#ddd"/>')
        body.append(f'<text x="{position:.1f}" y="{bottom + 14}" text-anchor="middle">'
                    f'{tick:g}{unit if tick_unit else ""}</text>')
    if reference is not None:
        position = x(reference)
        body.append(f'<line x1="{position:.1f}" y1="{top - 8}" x2="{position:.1f}" '
                    f'y2="{bottom}" stroke="black" stroke-dasharray="4,3"/>')

    y = top
    for label, per in groups:
        present = [name for name in series if per.get(name)]
        group_height = len(present) * bar
        body.append(f'<text x="{left - 8}" y="{y + group_height / 2 + 4:.1f}" '
                    f'text-anchor="end">{escape(label)}</text>')
        for name in present:
            end = x(per[name])
            body.append(f'<rect x="{left}" y="{y}" width="{max(end - left, 1):.1f}" '
                        f'height="{bar - 2}" fill="{PALETTE.get(name, "#444")}"/>')
            body.append(f'<text x="{end + 4:.1f}" y="{y + bar - 3}" font-size="9">'
                        f'{_short_number(per[name])}{unit}</text>')
            y += bar
        y += gap
    return _svg_document(width, height, body)


def ratio_chart(results, targets):
    series = [target for target in targets if target != "native"]
    groups = []
    for label, workload, field, kind, _unit in ratio_metrics(results["config"]):
        if workload not in results["throughput"]:
            continue
        groups.append((label, {t: ratio(results, workload, t, field, kind) for t in series}))
    if not any(value for _, per in groups for value in per.values()):
        return None
    return _bar_chart(
        "Throughput relative to native (higher is better)",
        "ratio to the native directory on a log axis; the dashed line is native speed",
        groups, series, "x", reference=1.0,
    )


def latency_chart(results):
    groups = []
    for name, record in lag_items(results):
        if "lag" in record and record["lag"].get("count"):
            groups.append((f"replication lag, {name}", {
                "p50": record["lag"]["p50_ms"], "p99": record["lag"]["p99_ms"]}))
    for mode, state, record in latency_items(results):
        if "write_close" in record:
            groups.append((f"write+close, {mode}, remote {state}", {
                "p50": record["write_close"]["p50_ms"],
                "p99": record["write_close"]["p99_ms"]}))
    if not any(value for _, per in groups for value in per.values()):
        return None
    return _bar_chart(
        "Replication lag and application write latency (lower is better)",
        "milliseconds on a log axis",
        groups, ["p50", "p99"], " ms", tick_unit=False,
    )
