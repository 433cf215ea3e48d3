"""The results: a table on the terminal, `<timestamp>.json`, and `<timestamp>.png` (matplotlib, Agg)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.latency import HOPS
from bench.resources import INFRA, SERVICES
from bench.targets import dig


def _num(value: Any, digits: int = 1, unit: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:,.{digits}f}" if isinstance(value, float) else f"{value:,}"
    return f"{text} {unit}".rstrip()


def _short(ms: float) -> str:
    return f"{ms:.2f}" if abs(ms) < 10 else f"{ms:.0f}"


def _ms(summary: dict[str, Any] | None) -> str:
    if not summary or not summary.get("count"):
        return "-"
    return f"p50 {_short(summary['p50'])} · p95 {_short(summary['p95'])} · p99 {_short(summary['p99'])} ms"


def print_report(results: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        console = Console()
        if not console.is_terminal:
            console = Console(width=160)
    verdicts = {row["figure"]: row for row in results.get("targets", [])}

    table = Table(title=f"modelreg bench {results['run_id']} ({results['started_at']}, "
                        f"{results['machine']['cpus']} CPUs, load {results['machine']['load_average_at_start'][0]})",
                  show_lines=False, title_justify="left")
    table.add_column("figure")
    table.add_column("measured", justify="right")
    table.add_column("target", justify="right")
    table.add_column("verdict")

    def row(figure: str, measured: str, goal: str | None = None) -> None:
        judged = verdicts.get(goal or "")
        if judged is None:
            table.add_row(figure, measured, "", "")
            return
        colour = {True: "green", False: "red"}.get(judged["met"], "yellow")
        table.add_row(figure, measured, judged["target"] + " " + judged["unit"],
                      f"[{colour}]{judged['verdict']}[/{colour}]")

    t = results.get("throughput")
    if t:
        table.add_section()
        row(f"throughput: {t['versions']:,} versions / {t['models']} models, 1 KiB artifacts",
            f"published in {t['published_seconds']:.2f} s")
        for point, label in (("ingested", "to model.ingested"), ("validated", "to model.validated")):
            row(f"  versions/s {label}", _rate(t[point]))
        row("  versions/s to staging", _rate(t["staging"]), "pipeline: versions/s to staging")
        row(f"  decisions/s ({t['promoted_to_production']} promoted, {t['held']} held, {t['rejected']} rejected)",
            _rate(t["decided"]), "pipeline: decisions/s (promoted or held)")
    lat = results.get("latency")
    if lat:
        table.add_section()
        goal = next((g for g in verdicts if g.startswith("e2e p99")), None)
        row(f"latency: {lat['versions']:,} versions at {lat['offered_rate']:g}/s "
            f"({lat['completed']:,} reached production)", _ms(lat["e2e_ms"]))
        row("  e2e p99 (registered → promoted to production seen)", _num(dig(lat, "e2e_ms", "p99"), 1, "ms"), goal)
        for label, _, _ in HOPS:
            row(f"  hop {label}", _ms(lat["hops_ms"].get(label)))
    look = results.get("lookup")
    if look:
        table.add_section()
        goal = next((g for g in verdicts if g.startswith("champion lookup")), None)
        row(f"champion lookup: {look['seeded_versions']:,} versions SEEDED into the view tables "
            f"({look['seeded_models']:,} models; not pushed through the pipeline), API {look['api']}, "
            f"{look['concurrency']} connections", "")
        for key, label in (("first_lookup", "first lookup of each model (API cache cold)"),
                           ("lookup_200", "GET .../production → 200"),
                           ("revalidate_304", "If-None-Match → 304")):
            series = look[key]
            row(f"  {label}", f"{_ms(series)}, {_num(series.get('requests_per_second'), 0)} req/s"
                + (f", errors {series['errors']}" if series.get("errors") else ""))
        row("  p99 of GET → 200", _num(dig(look, "lookup_200", "p99"), 2, "ms"), goal)
    big = results.get("large")
    if big:
        table.add_section()
        goal = next((g for g in verdicts if g.startswith("large artifact")), None)
        row(f"large artifact: {big['bytes'] / 1024**2:,.0f} MiB through ingest",
            f"{big['seconds']:.1f} s, {big['mb_per_second']:.0f} MB/s")
        row(f"  ingest peak RSS growth (baseline {big['rss_baseline_mib']:.0f} MiB, peak {big['rss_peak_mib']:.0f})",
            _num(big["rss_growth_mib"], 1, "MiB"), goal)
    rep = results.get("replay")
    if rep:
        table.add_section()
        row(f"replay: {rep['events']:,} audit events rebuilt in {rep['seconds']:.2f} s",
            _num(rep["events_per_second"], 0, "events/s"), "replay: audit events/s")
    signed = results.get("trust")
    if signed:
        table.add_section()
        row(f"signed events: {signed['events_signed_per_version']} signed and "
            f"{signed['verifications_per_version']} verified per version by the pipeline's services "
            f"({signed['sign_us_per_event']:.0f} / {signed['verify_us_per_event']:.0f} µs each)",
            _num(signed["cpu_ms_per_version"], 2, "CPU ms/version"))
        if "share_of_pipeline_cpu_percent" in signed:
            row(f"  of the pipeline's {signed['pipeline_cpu_ms_per_version']:.1f} CPU ms per version",
                _num(signed["share_of_pipeline_cpu_percent"], 1, "%"),
                "signed events: signing + verifying, share of the pipeline's CPU per version")
        if signed.get("webhooks_all_types_verifications_per_version"):
            row(f"  a webhook endpoint on every event type: "
                f"{signed['webhooks_all_types_verifications_per_version']} verifications more",
                _num(signed["webhooks_all_types_cpu_ms_per_version"], 2, "CPU ms/version"))
    scanned = results.get("scan")
    if scanned:
        table.add_section()
        small = scanned["throughput_artifact"]
        row(f"artifact scan: the throughput's {small['bytes']:,}-byte {small['format']} file, spooled and scanned",
            _num(small["cpu_ms"], 3, "CPU ms/version"))
        if "share_of_pipeline_cpu_percent" in scanned:
            row(f"  of the pipeline's {scanned['pipeline_cpu_ms_per_version']:.1f} CPU ms per version",
                _num(scanned["share_of_pipeline_cpu_percent"], 1, "%"),
                "artifact scan: share of the pipeline's CPU per version")
        forest = scanned["sklearn_joblib"]
        row("  a scikit-learn forest, joblib.dump(compress=3)"
            + (f" ({forest['bytes']:,} bytes)" if "bytes" in forest else ""),
            _num(forest["cpu_ms"], 2, "CPU ms") if "cpu_ms" in forest else forest["not_measured"])
    plain = results.get("plaintext")
    if plain:
        table.add_section()
        secured, bare = plain["secured"], plain["plaintext"]
        row("security: the throughput phase again on a PLAINTEXT broker (no TLS, SASL or ACLs)",
            f"{_num(bare['staging_per_second'], 1, 'versions/s')} vs {_num(secured['staging_per_second'], 1, '')} "
            "secured")
        row("  CPU per version: PLAINTEXT vs SASL_SSL + ACLs (every process measured)",
            f"{_num(bare['cpu_ms_per_version'], 1, 'ms')} vs {_num(secured['cpu_ms_per_version'], 1, 'ms')}")
        if "tls_sasl_cpu_ms_per_version" in plain:
            row("  TLS + SASL cost per version (the difference)",
                f"{_num(plain['tls_sasl_cpu_ms_per_version'], 1, 'CPU ms')} "
                f"({_num(plain['security_share_of_cpu_percent'], 1, '%')} of the secured run's)")
        if plain.get("signatures_cpu_ms_per_version") is not None:
            row("  signatures per version (the trust phase, in both runs)",
                _num(plain["signatures_cpu_ms_per_version"], 2, "CPU ms"))
    soaked = results.get("soak")
    if soaked:
        table.add_section()
        row(f"soak: {soaked['versions']:,} versions over {soaked['seconds']:.0f} s, a random service SIGKILLed "
            f"{soaked['kills']} times ({', '.join(f'{n} {k}' for n, k in soaked['kills_by_service'].items() if k)})",
            "every version accounted for" if soaked["accounted_for"] else "NOT accounted for")
        row(f"  after the flow: every version at its stage ({soaked['failing_qa_kept_in_staging']} failing QA kept "
            "in staging) / every consumer caught up",
            f"{_num(soaked['settle_seconds_after_flow'], 1, 's')} / {_num(soaked['drain_seconds_after_flow'], 1, 's')}")
    scaled = results.get("scaleout")
    if scaled:
        table.add_section()
        row(f"scale-out: {scaled['versions']:,} versions / {scaled['models']} models on {scaled['brokers']} brokers "
            f"({scaled['partitions_per_topic']} partitions a topic), 1 then 2 processes of every service", "")
        for replicas, figures in scaled["replicas"].items():
            runs = f", mean of {figures['runs']} runs" if figures["runs"] > 1 else ""
            row(f"  {replicas} replica(s){runs}: to staging / decisions / CPU per version (every process)"
                + ("" if figures["complete"] else " INCOMPLETE"),
                f"{_num(figures['staging_per_second'], 1, 'versions/s')} / "
                f"{_num(figures['decided_per_second'], 1, '/s')} / {_num(figures['cpu_ms_per_version'], 1, 'ms')}")
        ratio = scaled["two_over_one"]
        row("  2 replicas over 1: to staging / decisions / CPU per version",
            " / ".join(f"{ratio[k]:g}x" if ratio.get(k) is not None else "-"
                       for k in ("staging_per_second", "decided_per_second", "cpu_ms_per_version")))
    res = results.get("resources")
    if res:
        table.add_section()
        per = res.get("per_versions")
        row("resources: idle memory before the run (RSS after it), idle CPU; CPU across the throughput phase"
            + (f" (per 1,000 of {per:,} versions)" if per else " (throughput not run)"), "")
        for name in (*SERVICES, *INFRA):
            proc = res["processes"].get(name)
            if proc is None:
                row(f"  {name}", "not found")
                continue
            memory = f"{'PSS' if name == 'postgres' else 'RSS'} {proc['idle_mib']:.0f} MiB"
            if proc.get("idle_pss_mib"):
                memory += f" (PSS {proc['idle_pss_mib']:.0f})"
            if proc.get("after_mib"):
                memory += f", {proc['after_mib']:.0f} after the load"
            cpu = proc.get("cpu_seconds_per_1000_versions")
            text = memory + (f", {cpu:.2f} CPU-s / 1k versions" if cpu is not None else "")
            row(f"  {name}" + (f" ({proc['note']})" if proc.get("note") else ""), text,
                f"idle RSS: {name}" if name in SERVICES else None)
            idle_cpu = proc.get("idle_cpu_percent_of_a_core")
            if idle_cpu is not None:
                row("    idle CPU", f"{idle_cpu:.2f}% of a core", f"idle CPU: {name}" if name in SERVICES else None)
    console.print(table)

    comparisons = results.get("mlflow_comparison") or []
    if comparisons:
        ref = Table(title="modelreg vs MLflow 3.17 (PostgreSQL backend)", title_justify="left")
        for column in ("figure", "modelreg", "MLflow", "MLflow figure from", "ratio"):
            ref.add_column(column, justify="right" if column in ("modelreg", "MLflow", "ratio") else "left")
        for item in comparisons:
            ref.add_row(item["figure"], _num(item["modelreg"], 1), _num(item["mlflow"], 1), item["mlflow_source"],
                        f"{item['ratio']:g}x" if item["ratio"] is not None else "-")
        console.print(ref)
    for phase, error in (results.get("errors") or {}).items():
        console.print(f"[red]{phase} failed:[/red] {error}")
    if results.get("notes"):
        for note in results["notes"]:
            console.print(f"note: {note}")


def _rate(point: dict[str, Any]) -> str:
    if not point or not point.get("per_second"):
        return "-"
    text = f"{point['per_second']:,.0f}/s ({point['count']:,} in {point['seconds']:.2f} s)"
    return text if point.get("complete") else text + " INCOMPLETE"


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def draw_chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    figure.suptitle(f"modelreg bench {results['run_id']} — {results['started_at']}", fontsize=13)
    _throughput_axes(axes[0][0], results.get("throughput"))
    _latency_cdf_axes(axes[0][1], results.get("latency"))
    _hops_axes(axes[1][0], results.get("latency"))
    _lookup_axes(axes[1][1], results.get("lookup"))
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def _empty(ax: Any, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _cdf(ax: Any, samples: list[float], label: str) -> None:
    if not samples:
        return
    n = len(samples)
    ax.plot(samples, [(i + 1) / n for i in range(n)], label=label, drawstyle="steps-post")


def _throughput_axes(ax: Any, t: dict[str, Any] | None) -> None:
    if not t:
        return _empty(ax, "pipeline throughput")
    for point in ("ingested", "validated", "staged", "decided"):
        times = t["curves"].get(point) or []
        count = t["staging" if point == "staged" else point]["count"]
        if times:
            k = len(times)
            ax.plot([0.0, *times], [0.0, *(count * (i + 1) / k for i in range(k))], label=point)
    ax.axhline(t["versions"], color="grey", linewidth=0.8, linestyle=":")
    ax.set_title(f"pipeline: {t['versions']:,} versions published at once")
    ax.set_xlabel("seconds after the first model.registered")
    ax.set_ylabel("versions")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return None


def _latency_cdf_axes(ax: Any, lat: dict[str, Any] | None) -> None:
    if not lat or not lat.get("e2e_samples_ms"):
        return _empty(ax, "end-to-end latency")
    _cdf(ax, lat["e2e_samples_ms"], "registered → production (seen)")
    ax.axvline(250, color="red", linestyle="--", linewidth=1, label="target p99 250 ms")
    for q, style in (("p50", ":"), ("p99", "-.")):
        value = lat["e2e_ms"][q]
        ax.axvline(value, color="black", linestyle=style, linewidth=0.8, label=f"{q} {value:.0f} ms")
    ax.set_xscale("log")
    ax.set_title(f"end-to-end latency CDF at {lat['offered_rate']:g} versions/s")
    ax.set_xlabel("ms (log)")
    ax.set_ylabel("fraction of versions")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return None


def _hops_axes(ax: Any, lat: dict[str, Any] | None) -> None:
    if not lat or not lat.get("hops_ms"):
        return _empty(ax, "per hop")
    labels = [label for label, _, _ in HOPS if lat["hops_ms"].get(label, {}).get("count")]
    positions = range(len(labels))
    height = 0.27
    for offset, q in ((-height, "p50"), (0.0, "p95"), (height, "p99")):
        ax.barh([p + offset for p in positions], [max(lat["hops_ms"][label][q], 0.01) for label in labels],
                height=height, label=q)
    ax.set_yticks(list(positions), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("ms (log)")
    ax.set_title("per hop (CloudEvents time and the benchmark's clock)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="x", which="both")
    return None


def _lookup_axes(ax: Any, look: dict[str, Any] | None) -> None:
    if not look:
        return _empty(ax, "champion lookup")
    for key, label in (("first_lookup", "first lookup (cache cold)"), ("lookup_200", "200"),
                       ("revalidate_304", "304 (If-None-Match)")):
        _cdf(ax, look[key].get("samples_ms") or [], label)
    ax.axvline(2, color="red", linestyle="--", linewidth=1, label="target p99 2 ms")
    ax.set_xscale("log")
    ax.set_title(f"champion lookup, {look['seeded_versions']:,} seeded versions, {look['concurrency']} connections")
    ax.set_xlabel("ms (log), measured by the client")
    ax.set_ylabel("fraction of requests")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return None
