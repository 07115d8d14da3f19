"""`upsell simulate --report`: one self-contained HTML file whose charts are there (each an
embedded PNG, decoded and looked at: its size, and that it is not blank) next to the figures of
the summary; with --compare, the before and after; without matplotlib, one line naming the extra."""
from __future__ import annotations

import base64
import io
import re

import pytest

from rules.config import default_rules_text
from streams.backtest import Tally, backtest_lines
from streams.generate import generate
from tests.test_cli import ROOT, one_line_mistake, upsell
from tests.test_experiments import EXPERIMENT

image = pytest.importorskip("matplotlib.image")



@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    rules, other = tmp / "rules.toml", tmp / "other.toml"
    rules.write_text(default_rules_text().replace("share = 0.05", "share = 0.2") + EXPERIMENT)
    other.write_text(default_rules_text().replace("min_gap_days = 7 ", "min_gap_days = 21 "))
    rec = tmp / "rec.jsonl"
    rec.write_bytes(b"".join(generate(300, 120, 5, "2025-01-01")))
    alone, compared = tmp / "alone.html", tmp / "compared.html"
    res = upsell("simulate", str(rec), "--rules", str(rules), "--out", str(tmp / "p.jsonl"), "--report", str(alone))
    assert res.returncode == 0, res.stderr
    res = upsell("simulate", str(rec), "--rules", str(rules), "--compare", str(other), "--report", str(compared))
    assert res.returncode == 0, res.stderr
    from rules.config import load_rules
    tally = Tally.of(backtest_lines(rec.read_bytes().splitlines(), load_rules(rules), 8))
    return alone.read_text(), compared.read_text(), tally


def charts(text: str) -> dict:
    """section id -> the decoded image (rows x columns x channels)."""
    found = re.findall(r'<section id="(\w+)"><h2>[^<]*</h2><img alt="[^"]*" src="data:image/png;base64,([^"]+)">', text)
    return {name: image.imread(io.BytesIO(base64.b64decode(data)), format="png") for name, data in found}


def test_every_chart_is_an_image_with_something_drawn(made):
    alone, compared, _ = made
    got = charts(alone)
    assert list(got) == ["weekly", "funnel", "conversion", "uplift", "variants"]
    assert list(charts(compared)) == ["weekly", "funnel", "conversion", "uplift", "variants", "compare"]
    for name, img in got.items():
        rows, cols = img.shape[:2]
        assert rows >= 250 and cols >= 600, (name, img.shape)
        colours = {tuple(px) for px in img.reshape(-1, img.shape[2])[:: 7].tolist()}
        assert len(colours) > 20, name                 # axes, bars, labels: not a blank canvas
    assert "<script" not in alone and "http" not in alone.replace("http-equiv", "")   # self-contained


def test_the_report_says_what_the_summary_says(made):
    alone, _, tally = made
    total = tally.measure.rows()[-1]
    row = re.search(r"<tr><td>total</td><td></td><td>(\d+)</td><td>(\d+)</td>", alone)
    assert row and (int(row[1]), int(row[2])) == (total["proposals"], total["converted"])
    assert total["held_out"] > 0 and f"<td>{total['held_out']}</td>" in alone
    for v in tally.measure.variant_rows():
        assert f"<td>{v['experiment']}</td><td>{v['variant']}</td><td>{v['proposals']}</td>" in alone


def test_without_matplotlib_a_report_is_one_line_naming_the_extra(tmp_path):
    fake = tmp_path / "matplotlib"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not installed')\n")
    res = upsell("simulate", str(ROOT / "streams" / "data" / "sample.jsonl"), "--report", str(tmp_path / "r.html"),
                 env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    one_line_mistake(res, "upsell-engine[report]")
