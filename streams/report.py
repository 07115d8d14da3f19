"""`upsell simulate FILE --report report.html`: one self-contained HTML file for a person.

Charts drawn with matplotlib (the `report` extra), embedded as PNG images, with the figures
beside them as tables: proposals per week by trigger, how the proposals ended per trigger (the
funnel), conversion of the proposals sent and of the held-out decisions with their intervals, the
uplift per trigger, the variants of each experiment, and with `--compare RULES2` the two rules
files side by side. Everything comes from `streams.measure.Measure`, so the report says what the
summary says.
"""
from __future__ import annotations

import base64
import html
import io
from datetime import date

from streams.measure import Group, Measure, wilson

FUNNEL = ("converted", "declined", "withdrawn", "expired", "open")
COLOURS = {"converted": "#2a9d8f", "declined": "#e76f51", "withdrawn": "#f4a261", "expired": "#8d99ae",
           "open": "#d9d9d9"}


class MissingExtra(RuntimeError):
    """matplotlib is not installed."""


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise MissingExtra("--report draws with matplotlib: pip install 'upsell-engine[report]'") from None
    matplotlib.use("Agg")           # files, never a window
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    fig.clf()
    return base64.b64encode(buf.getvalue()).decode()


def _by_trigger(groups: dict) -> dict[str, Group]:
    """(trigger, kind) -> Group, folded by trigger."""
    out: dict[str, Group] = {}
    for (trigger, _), g in sorted(groups.items()):
        out.setdefault(trigger, Group()).absorb(g)
    return out


def weekly_chart(plt, m: Measure) -> str:
    weeks = sorted({w for w, _ in m.weekly})
    triggers = sorted({t for _, t in m.weekly})
    fig, ax = plt.subplots(figsize=(10, 4))
    bottom = [0] * len(weeks)
    x = [date.fromisoformat(w) for w in weeks]
    for t in triggers:
        counts = [m.weekly.get((w, t), 0) for w in weeks]
        ax.bar(x, counts, width=6, bottom=bottom, label=t, align="edge")
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_ylabel("proposals sent")
    ax.set_title("Proposals per week, by trigger")
    ax.legend(fontsize=8, ncols=3)
    fig.autofmt_xdate()
    return _png(fig)


def funnel_chart(plt, treated: dict[str, Group]) -> str:
    names = list(treated)
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(names) + 1.5))
    left = [0.0] * len(names)
    for state in FUNNEL:
        shares = [g.funnel()[state] / g.decisions if g.decisions else 0 for g in treated.values()]
        ax.barh(names, shares, left=left, color=COLOURS[state], label=state)
        left = [a + b for a, b in zip(left, shares)]
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of the proposals sent")
    ax.set_title("How the proposals ended, by trigger")
    ax.invert_yaxis()
    ax.legend(fontsize=8, ncols=5, loc="lower center", bbox_to_anchor=(0.5, 1.08))
    return _png(fig)


def conversion_chart(plt, treated: dict[str, Group], held: dict[str, Group]) -> str:
    names = list(treated)
    fig, ax = plt.subplots(figsize=(10, 4))
    for offset, groups, label in ((-0.18, treated, "proposals sent"), (0.18, held, "held out")):
        xs, ys, lo, hi = [], [], [], []
        for i, name in enumerate(names):
            g = groups.get(name)
            if g is None or not g.decisions:
                continue
            rate = g.converted / g.decisions
            a, b = wilson(g.converted, g.decisions)
            xs.append(i + offset)
            ys.append(rate)
            lo.append(rate - a)
            hi.append(b - rate)
        ax.errorbar(xs, ys, yerr=[lo, hi], fmt="o", capsize=4, label=label)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("conversion rate (95% Wilson interval)")
    ax.set_title("Conversion of the proposals sent and of the held-out decisions")
    ax.legend(fontsize=8)
    return _png(fig)


def _intervals(plt, labels: list[str], values: list[float], lo: list[float], hi: list[float], xlabel: str,
               title: str, zero: bool = False) -> str:
    """One point a row with its interval [lo, hi], the first row on top."""
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(labels) + 1.5))
    ax.errorbar(values, range(len(labels)), xerr=[[v - a for v, a in zip(values, lo)],
                                                  [b - v for v, b in zip(values, hi)]], fmt="o", capsize=4)
    if zero:
        ax.axvline(0, color="grey", linewidth=1)
    ax.set_yticks(range(len(labels)), labels)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return _png(fig)


def uplift_chart(plt, rows: list[dict]) -> str | None:
    rows = [r for r in rows if r["uplift"] is not None]
    if not rows:
        return None
    return _intervals(plt, [r["trigger"] + ("" if r["trigger"] == "total" else f" ({r['kind']})") for r in rows],
                      *zip(*(r["uplift"] for r in rows)),
                      "uplift: treated rate - held-out rate (95% Newcombe interval)", "Uplift over the holdout group",
                      zero=True)


def variants_chart(plt, rows: list[dict]) -> str | None:
    rows = [r for r in rows if r["interval"] is not None]
    if not rows:
        return None
    return _intervals(plt, [f"{r['experiment']}: {r['variant']}" for r in rows], [r["rate"] for r in rows],
                      [r["interval"][0] for r in rows], [r["interval"][1] for r in rows],
                      "conversion rate (95% Wilson interval)", "Variant against variant")


def compare_chart(plt, before: Measure, after: Measure) -> str:
    a, b = _by_trigger(before.treated), _by_trigger(after.treated)
    names = sorted(set(a) | set(b))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 0.45 * len(names) + 1.8), sharey=True)
    ys = range(len(names))
    for offset, groups, label in ((-0.2, a, "before"), (0.2, b, "after")):
        count = [groups[n].decisions if n in groups else 0 for n in names]
        rate = [groups[n].converted / groups[n].decisions if n in groups and groups[n].decisions else 0
                for n in names]
        left.barh([y + offset for y in ys], count, height=0.4, label=label)
        right.barh([y + offset for y in ys], rate, height=0.4, label=label)
    left.set_yticks(list(ys), names)
    left.invert_yaxis()
    left.set_xlabel("proposals sent")
    right.set_xlabel("conversion rate")
    left.legend(fontsize=8)
    fig.suptitle("Before and after, by trigger")
    return _png(fig)


def _table(head: list[str], rows: list[list]) -> str:
    cells = "".join(f"<th>{html.escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{cells}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def render(m: Measure, title: str, other: Measure | None = None, other_title: str = "") -> str:
    """The report as one HTML document: charts as embedded PNGs, each with its figures."""
    plt = _pyplot()
    treated, held = _by_trigger(m.treated), _by_trigger(m.held)
    rows = m.rows()
    sections = []

    def figure(name: str, png: str | None, caption: str, table: str = "") -> None:
        if png is not None:
            sections.append(f'<section id="{name}"><h2>{html.escape(caption)}</h2>'
                            f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{png}">{table}</section>')

    if m.weekly:
        figure("weekly", weekly_chart(plt, m), "Proposals per week, by trigger")
    if treated:
        funnels = [[name, g.decisions, *g.funnel().values()] for name, g in treated.items()]
        figure("funnel", funnel_chart(plt, treated), "How the proposals ended",
               _table(["trigger", "proposals", *FUNNEL], funnels))
        figure("conversion", conversion_chart(plt, treated, held), "Conversion, sent and held out",
               _table(["trigger", "kind", "proposals", "converted", "rate", "expansion MRR", "order value",
                       "held out", "held converted", "held rate"],
                      [[r["trigger"], r["kind"], r["proposals"], r["converted"], _pct(r["rate"]),
                        f"{r['expansion_mrr']:,.0f}", f"{r['order_value']:,.0f}", r["held_out"],
                        r["held_converted"], _pct(r["held_rate"])] for r in rows]))
        uplift = [r for r in rows if r["uplift"] is not None]
        figure("uplift", uplift_chart(plt, rows), "Uplift over the holdout group",
               _table(["trigger", "kind", "uplift", "95% interval"],
                      [[r["trigger"], r["kind"], f"{r['uplift'][0]:+.1%}",
                        f"{r['uplift'][1]:+.1%} to {r['uplift'][2]:+.1%}"] for r in uplift]))
    variants = m.variant_rows()
    figure("variants", variants_chart(plt, variants), "Variant against variant",
           _table(["experiment", "variant", "proposals", "converted", "rate", "p against the first", "significant"],
                  [[v["experiment"], v["variant"], v["proposals"], v["converted"], _pct(v["rate"]),
                    "-" if v["p_value"] is None else f"{v['p_value']:.3f}",
                    "-" if v["significant"] is None else ("yes" if v["significant"] else "no")] for v in variants]))
    if other is not None:
        figure("compare", compare_chart(plt, m, other), f"Before ({title}) and after ({other_title})")
    plt.close("all")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Upsell Engine report: {html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}}
img{{max-width:100%}}table{{border-collapse:collapse;margin:1em 0;font-size:90%}}
td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}td:first-child,th:first-child{{text-align:left}}
</style></head><body>
<h1>Upsell Engine report</h1>
<p>Rules: {html.escape(title)}{f" against {html.escape(other_title)}" if other is not None else ""}.
Conversions count within the attribution window; the uplift is the proposals' conversion rate
less the held-out decisions'.</p>
{"".join(sections)}
</body></html>
"""
