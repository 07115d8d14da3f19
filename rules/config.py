"""The rules file: catalog, trigger thresholds and guardrails (TOML).

`load_rules(path)` parses and checks the whole file up front; any mistake
raises `RulesError` naming the file, the line and what was expected, so a
worker with a bad rules file fails at start, never mid-stream.
"""
from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

DEFAULT_RULES = "default.toml"


class RulesError(ValueError):
    def __init__(self, source: str, line: int | None, message: str):
        self.source, self.line, self.message = source, line, message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class Plan:
    name: str
    tier: int
    price: float
    limits: dict[str, float]
    display_name: str = ""      # what a person reads (proposals carry it); the name if not given

    @property
    def paid(self) -> bool:
        return self.price > 0


@dataclass(frozen=True)
class Campaign:
    name: str
    segment: str
    start: tuple[int, int]
    end: tuple[int, int]
    skus: tuple[str, ...]


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    offer: dict            # keys set on the trigger's offer (changed or added)
    reason: str = ""       # words added to the reason text


@dataclass(frozen=True)
class Experiment:
    """An offer test: each customer gets one variant of the offers of `triggers`, fixed by a hash
    of (experiment, customer_id) and the variants' weights (`rules.experiments`)."""
    name: str
    triggers: tuple[str, ...]
    variants: tuple[Variant, ...]


@dataclass(frozen=True)
class VolumeLine:
    name: str
    benefit: str
    min_total: float | None = None
    near_ratio: float | None = None
    min_qty: int | None = None
    near_qty: int | None = None


@dataclass(frozen=True)
class Rules:
    plans: tuple[Plan, ...]
    products: dict[str, dict]
    relations: dict[str, tuple[tuple[str, str], ...]]   # sku -> ((related, type), ...)
    bundles: tuple[dict, ...]
    campaigns: tuple[Campaign, ...]
    triggers: dict[str, dict[str, Any]]
    guardrails: dict[str, Any]
    volume_lines: tuple[VolumeLine, ...]
    source: str = "<rules>"
    experiments: tuple[Experiment, ...] = ()
    holdout: float = 0.0                                            # share of all customers
    holdout_by_trigger: dict[str, float] = field(default_factory=dict)   # and per trigger
    attribution_days: int = 30      # how long after a proposal a conversion counts ([lifecycle])
    plan_by_name: dict[str, Plan] = field(default_factory=dict)
    digest: str = ""        # the file's SHA-256, its first 12 hex digits: which rules a worker runs

    def __post_init__(self):
        self.plan_by_name.update({p.name: p for p in self.plans})
        # derived numbers read on every usage event
        t = self.triggers
        object.__setattr__(self, "keep_usage_ms", max(
            t["renewal"]["lookback_days"], t["usage_forecast"]["window_days"]) * 86_400_000)
        object.__setattr__(self, "underuse_threshold", t["underuse"]["threshold"])
        object.__setattr__(self, "_tiers_above", {})

    def tiers_above(self, plan: Plan, metric: str) -> tuple[tuple[float, Plan], ...]:
        """(limit for `metric`, plan) of every tier above `plan`, lowest first; no limit is inf."""
        got = self._tiers_above.get((plan.name, metric))
        if got is None:
            got = self._tiers_above[(plan.name, metric)] = tuple(
                (p.limits.get(metric, float("inf")), p) for p in self.plans if p.tier > plan.tier)
        return got

    def t(self, trigger: str) -> dict[str, Any]:
        return self.triggers[trigger]

    def volume_line(self, name: str) -> VolumeLine | None:
        return next((line for line in self.volume_lines if line.name == name), None)


TRIGGER_KEYS: dict[str, dict[str, type | tuple]] = {
    "usage_limit": {"levels": list, "priorities": list, "valid_days": int},
    "usage_forecast": {"horizon_days": int, "window_days": int, "min_points": int,
                       "priority": int, "valid_days": int},
    "renewal": {"lead_days": int, "lookback_days": int, "high": float, "low": float,
                "annual_discount_pct": float, "downsell_fit": float, "priority": int},
    "fiscal_year_end": {"lead_days": int, "priority": int},
    "purchase": {"max_items": int, "priority": int, "valid_days": int},
    "co_purchase": {"window_days": int, "min_support": int, "min_confidence": float,
                    "max_items": int, "priority": int, "valid_days": int},
    "underuse": {"threshold": float, "days": int, "downsell_fit": float,
                 "priority": int, "valid_days": int},
    "season": {"priority": int},
    "volume": {"priority": int, "valid_days": int, "lines": list},
}
GUARDRAIL_KEYS = ("quiet_days", "unhappy_nps_max", "nps_window_days", "churn_window_days",
                  "cap_count", "cap_window_days", "min_gap_days", "decline_cooldown_days")
SEGMENTS = ("b2b", "b2c")
_MMDD = re.compile(r"^(\d\d)-(\d\d)$")


class _Checker:
    """Finds the line of a dotted key path in the TOML text, for messages."""

    def __init__(self, source: str, text: str):
        self.source, self.lines = source, text.splitlines()

    def line_of(self, path: tuple) -> int | None:
        # Walk the path: tables first, then the last plain key after them.
        names = [p for p in path if isinstance(p, str)]
        index = [p for p in path if isinstance(p, int)]
        start = 0
        for depth in range(len(names), 0, -1):
            header = ".".join(names[:depth])
            hits = [i for i, ln in enumerate(self.lines)
                    if re.match(rf"^\s*\[\[?\s*{re.escape(header)}\s*\]\]?", ln)]
            if hits:
                pick = index[0] if index and len(hits) > index[0] and "[[" in self.lines[hits[0]] else 0
                start = hits[min(pick, len(hits) - 1)]
                rest = names[depth:]
                if not rest:
                    return start + 1
                for i in range(start + 1, len(self.lines)):
                    if re.match(r"^\s*\[", self.lines[i]):
                        break
                    if re.match(rf'^\s*"?{re.escape(rest[0])}"?\s*=', self.lines[i]):
                        return i + 1
                return start + 1
        for i, ln in enumerate(self.lines):
            if names and re.match(rf'^\s*"?{re.escape(names[-1])}"?\s*=', ln):
                return i + 1
        return None

    def fail(self, path: tuple, message: str):
        dotted = ".".join(str(p) for p in path)
        raise RulesError(self.source, self.line_of(path), f"{dotted}: {message}")

    def number(self, value, path, kind, lo=None, hi=None):
        ok = (isinstance(value, int) and not isinstance(value, bool)) if kind is int else (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if not ok:
            self.fail(path, f"expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        if lo is not None and value < lo:
            self.fail(path, f"expected a value >= {lo}, got {value!r}")
        if hi is not None and value > hi:
            self.fail(path, f"expected a value <= {hi}, got {value!r}")
        return value

    def text(self, value, path):
        if not isinstance(value, str) or not value:
            self.fail(path, f"expected a non-empty string, got {value!r}")
        return value

    def table(self, doc, key, path):
        value = doc.get(key)
        if not isinstance(value, dict):
            self.fail(path + (key,), "missing table" if value is None else f"expected a table, got {value!r}")
        return value

    def mmdd(self, value, path):
        m = _MMDD.match(value) if isinstance(value, str) else None
        if not m or not (1 <= int(m[1]) <= 12 and 1 <= int(m[2]) <= 31):
            self.fail(path, f"expected a date as MM-DD, got {value!r}")
        return int(m[1]), int(m[2])


def _parse(doc: dict, ck: _Checker) -> Rules:
    if doc.get("version") != 1:
        ck.fail(("version",), f"expected version = 1, got {doc.get('version')!r}")
    plans = []
    for i, p in enumerate(doc.get("plans") or []):
        path = ("plans", i)
        limits = p.get("limits")
        if not isinstance(limits, dict) or not limits:
            ck.fail(path + ("limits",), "expected a table of metric = limit")
        plans.append(Plan(ck.text(p.get("name"), path + ("name",)),
                          ck.number(p.get("tier"), path + ("tier",), int, 0),
                          ck.number(p.get("price"), path + ("price",), float, 0),
                          {m: ck.number(v, path + ("limits", m), float, 0) for m, v in limits.items()},
                          ck.text(p.get("display_name", p.get("name")), path + ("display_name",))))
    if not plans:
        ck.fail(("plans",), "at least one [[plans]] entry is required")
    if len({p.tier for p in plans}) != len(plans) or len({p.name for p in plans}) != len(plans):
        ck.fail(("plans",), "plan names and tiers must be unique")
    plans.sort(key=lambda p: p.tier)

    products = doc.get("products") or {}
    for sku, prod in products.items():
        if not isinstance(prod, dict):
            ck.fail(("products", sku), "expected { name = ..., price = ... }")
        ck.number(prod.get("price"), ("products", sku), float, 0)
        ck.text(prod.get("name"), ("products", sku, "name"))

    def known_skus(skus, path):
        if not isinstance(skus, list) or not skus:
            ck.fail(path, "expected a non-empty list of SKUs")
        for s in skus:
            if s not in products:
                ck.fail(path, f"unknown SKU {s!r}: add it to [products]")
        return tuple(skus)

    relations: dict[str, list] = {}
    for i, r in enumerate(doc.get("relations") or []):
        path = ("relations", i)
        sku = ck.text(r.get("sku"), path + ("sku",))
        known_skus([sku], path + ("sku",))
        kind = r.get("type", "accessory")
        if kind not in ("accessory", "complement"):
            ck.fail(path + ("type",), f"expected 'accessory' or 'complement', got {kind!r}")
        for rel in known_skus(r.get("related"), path + ("related",)):
            relations.setdefault(sku, []).append((rel, kind))
    bundles = []
    for i, b in enumerate(doc.get("bundles") or []):
        path = ("bundles", i)
        bundles.append({"name": ck.text(b.get("name"), path + ("name",)),
                        "skus": known_skus(b.get("skus"), path + ("skus",)),
                        "discount_pct": ck.number(b.get("discount_pct", 0), path + ("discount_pct",), float, 0, 100)})
    campaigns = []
    for i, c in enumerate(doc.get("campaigns") or []):
        path = ("campaigns", i)
        seg = c.get("segment")
        if seg not in SEGMENTS:
            ck.fail(path + ("segment",), f"expected one of {SEGMENTS}, got {seg!r}")
        campaigns.append(Campaign(ck.text(c.get("name"), path + ("name",)), seg,
                                  ck.mmdd(c.get("start"), path + ("start",)),
                                  ck.mmdd(c.get("end"), path + ("end",)),
                                  known_skus(c.get("skus"), path + ("skus",))))

    tdoc = ck.table(doc, "triggers", ())
    triggers: dict[str, dict] = {}
    for name, keys in TRIGGER_KEYS.items():
        section = ck.table(tdoc, name, ("triggers",))
        path = ("triggers", name)
        for key, kind in keys.items():
            if key not in section:
                ck.fail(path + (key,), "missing setting")
            if kind in (int, float):
                ck.number(section[key], path + (key,), kind, 0)
        unknown = set(section) - set(keys)
        if unknown:
            ck.fail(path + (sorted(unknown)[0],), f"unknown setting (known: {', '.join(keys)})")
        triggers[name] = dict(section)
    ul = triggers["usage_limit"]
    if not ul["levels"] or len(ul["levels"]) != len(ul["priorities"]) or ul["levels"] != sorted(ul["levels"]):
        ck.fail(("triggers", "usage_limit", "levels"),
                "expected ascending levels and one priority per level")
    for lv in ul["levels"]:
        ck.number(lv, ("triggers", "usage_limit", "levels"), float, 0.01, 10)
    for key in ("high", "low"):
        ck.number(triggers["renewal"][key], ("triggers", "renewal", key), float, 0, 10)
    if triggers["renewal"]["low"] >= triggers["renewal"]["high"]:
        ck.fail(("triggers", "renewal", "low"), "low must be below high")
    ck.number(triggers["co_purchase"]["min_confidence"], ("triggers", "co_purchase", "min_confidence"), float, 0, 1)
    lines = []
    for i, ln in enumerate(triggers["volume"]["lines"]):
        path = ("triggers", "volume", "lines", i)
        name = ck.text(ln.get("name"), path + ("name",))
        benefit = ck.text(ln.get("benefit"), path + ("benefit",))
        if "min_total" in ln:
            lines.append(VolumeLine(name, benefit,
                                    min_total=ck.number(ln["min_total"], path + ("min_total",), float, 0),
                                    near_ratio=ck.number(ln.get("near_ratio"), path + ("near_ratio",), float, 0, 1)))
        elif "min_qty" in ln:
            min_qty = ck.number(ln["min_qty"], path + ("min_qty",), int, 1)
            lines.append(VolumeLine(name, benefit, min_qty=min_qty,
                                    near_qty=ck.number(ln.get("near_qty"), path + ("near_qty",), int, 1, min_qty - 1)))
        else:
            ck.fail(path, "a volume line needs min_total (+ near_ratio) or min_qty (+ near_qty)")

    gdoc = ck.table(doc, "guardrails", ())
    for key in GUARDRAIL_KEYS:
        if key not in gdoc:
            ck.fail(("guardrails", key), "missing setting")
        ck.number(gdoc[key], ("guardrails", key), int, 0)
    unknown = set(gdoc) - set(GUARDRAIL_KEYS)
    if unknown:
        ck.fail(("guardrails", sorted(unknown)[0]), "unknown setting")

    experiments = _experiments(doc.get("experiments") or [], ck)
    hdoc = doc.get("holdout") or {}
    if not isinstance(hdoc, dict):
        ck.fail(("holdout",), "expected a table: share = 0.05, by_trigger = { renewal = 0.1 }")
    unknown = set(hdoc) - {"share", "by_trigger"}
    if unknown:
        ck.fail(("holdout", sorted(unknown)[0]), "unknown setting: expected share or by_trigger")
    share = ck.number(hdoc.get("share", 0.0), ("holdout", "share"), float, 0, 0.5)
    by_trigger = hdoc.get("by_trigger") or {}
    if not isinstance(by_trigger, dict):
        ck.fail(("holdout", "by_trigger"), "expected a table of trigger = share")
    for name, value in by_trigger.items():
        if name not in TRIGGER_KEYS:
            ck.fail(("holdout", "by_trigger"), f"unknown trigger {name!r}; expected one of {', '.join(TRIGGER_KEYS)}")
        ck.number(value, ("holdout", "by_trigger"), float, 0, 1)

    ldoc = doc.get("lifecycle") or {}
    if not isinstance(ldoc, dict):
        ck.fail(("lifecycle",), "expected a table: attribution_days = 30")
    unknown = set(ldoc) - {"attribution_days"}
    if unknown:
        ck.fail(("lifecycle", sorted(unknown)[0]), "unknown setting: expected attribution_days")
    attribution = ck.number(ldoc.get("attribution_days", 30), ("lifecycle", "attribution_days"), int, 1, 365)

    return Rules(tuple(plans), products, {k: tuple(v) for k, v in relations.items()},
                 tuple(bundles), tuple(campaigns), triggers, dict(gdoc), tuple(lines), source=ck.source,
                 experiments=experiments, holdout=float(share),
                 holdout_by_trigger={k: float(v) for k, v in by_trigger.items()},
                 attribution_days=attribution)


def _experiments(items, ck: _Checker) -> tuple[Experiment, ...]:
    """[[experiments]]: a name, the triggers it applies to (each in one experiment at most), and
    two or more [[experiments.variants]] with distinct names, positive weights and an offer."""
    if not isinstance(items, list):
        ck.fail(("experiments",), "expected [[experiments]] tables")
    out, names, taken = [], set(), {}
    before = 0          # variants of the experiments before: [[experiments.variants]] count on in the file
    for i, e in enumerate(items):
        path = ("experiments", i)
        name = ck.text(e.get("name"), path + ("name",))
        if name in names:
            ck.fail(path + ("name",), f"duplicate experiment {name!r}")
        names.add(name)
        triggers = e.get("triggers")
        if not isinstance(triggers, list) or not triggers:
            ck.fail(path + ("triggers",), "expected a non-empty list of triggers")
        for t in triggers:
            if t not in TRIGGER_KEYS:
                ck.fail(path + ("triggers",), f"unknown trigger {t!r}; expected one of {', '.join(TRIGGER_KEYS)}")
            if t in taken:
                ck.fail(path + ("triggers",), f"trigger {t!r} is already in experiment {taken[t]!r}")
            taken[t] = name
        variants, seen = [], set()
        raw = e.get("variants")
        if not isinstance(raw, list) or len(raw) < 2:
            ck.fail(path + ("variants",), "expected two or more [[experiments.variants]]")
        for j, v in enumerate(raw):
            vpath = ("experiments", "variants", before + j)
            vname = ck.text(v.get("name"), vpath + ("name",))
            if vname in seen:
                ck.fail(vpath + ("name",), f"duplicate variant {vname!r} in experiment {name!r}")
            seen.add(vname)
            weight = v.get("weight", 1)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                ck.fail(vpath + ("weight",), f"expected a positive weight, got {weight!r}")
            offer = v.get("offer", {})
            if not isinstance(offer, dict) or any(isinstance(x, dict) for x in offer.values()):
                ck.fail(vpath + ("offer",), "expected a table of offer keys and values, e.g. { discount_pct = 10 }")
            reason = v.get("reason", "")
            if not isinstance(reason, str):
                ck.fail(vpath + ("reason",), f"expected a string, got {reason!r}")
            variants.append(Variant(vname, float(weight), dict(offer), reason))
        before += len(raw)
        out.append(Experiment(name, tuple(triggers), tuple(variants)))
    return tuple(out)


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RulesError(source, int(m[1]) if m else None, f"not valid TOML: {exc}") from None
    rules = _parse(doc, _Checker(source, text))
    object.__setattr__(rules, "digest", hashlib.sha256(text.encode()).hexdigest()[:12])
    return rules


def default_rules_text() -> str:
    return resources.files("rules").joinpath(DEFAULT_RULES).read_text(encoding="utf-8")


def load_rules(path: str | Path | None = None) -> Rules:
    """Load a rules file, or the default one that ships with the package."""
    if path is None:
        return parse_rules(default_rules_text(), "default.toml")
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise RulesError(str(p), None, f"cannot read rules file: {exc.strerror}") from None
    return parse_rules(text, str(p))
