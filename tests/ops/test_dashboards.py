"""Dashboards and alert rules name only metrics the connector exports, and use them rightly.

The exported names come from `connector.metrics.Metrics` on a fresh registry, so these tests
follow the code: rename a metric there and every panel or rule that still uses the old name
fails here. A labelled metric has no samples until a label set is used, so each family's
sample names are also derived from its type, as the exposition format writes them: a counter
`x` is exported as `x_total`, a histogram `x` as `x_bucket`, `x_sum` and `x_count`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from connector.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((ROOT / "dashboards" / "grafana").glob("*.json"))
ALERTS = ROOT / "dashboards" / "prometheus" / "alerts.yml"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

# Series Prometheus writes itself for every scrape target.
PROMETHEUS_SERIES = {"up"}

SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@dataclass(frozen=True)
class Exported:
    family: str
    kind: str  # counter, gauge, histogram, ...
    sample: str

    @property
    def counts(self) -> bool:
        """A monotonic series: what rate(), irate() and increase() are for."""
        if self.kind == "histogram":
            return self.sample.endswith(("_bucket", "_sum", "_count"))
        return self.kind == "counter" and self.sample.endswith("_total")


def exported_metrics() -> dict[str, Exported]:
    """Every sample name the connector's `/metrics` can carry, from the code itself."""
    registry = CollectorRegistry()
    Metrics(registry)
    found: dict[str, Exported] = {}
    for family in registry.collect():
        names = {s.name for s in family.samples}
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
        for name in names:
            found[name] = Exported(family.name, family.type, name)
    return found


EXPORTED = exported_metrics()


# ---------------------------------------------------------------- a small PromQL reader
_TOKEN = re.compile(
    r"""
      (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
    | (?P<range>\[[^\]]*\])
    | (?P<number>0x[0-9a-fA-F]+|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:(?:ms|[smhdwy])\d*)*)
    | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
    | (?P<op>=~|!~|!=|==|>=|<=|[(){},+\-*/%^<>=@])
    | (?P<space>\s+)
    """,
    re.VERBOSE,
)
# Grafana's interval variables stand for a duration inside a range selector.
_GRAFANA_INTERVAL = re.compile(r"\$\{?__(?:rate_interval|interval|range)\b\}?")
_AGGREGATORS = {
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio",
}  # fmt: skip
_LABEL_LISTS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_COUNTER_FUNCTIONS = {"rate", "irate", "increase", "resets"}
_GAUGE_FUNCTIONS = {"deriv", "predict_linear", "delta", "idelta", "changes"}


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: str  # the text between the braces, "" when there are none
    function: str | None  # the function whose first argument this selector is, if any


def tokens(expr: str) -> list[tuple[str, str]]:
    """(kind, text) pairs; raises ValueError on anything PromQL cannot contain."""
    text = _GRAFANA_INTERVAL.sub("5m", expr)
    out: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            raise ValueError(f"cannot read PromQL at {text[pos : pos + 20]!r} in {expr!r}")
        kind = match.lastgroup
        assert kind is not None
        if kind != "space":
            out.append((kind, match.group()))
        pos = match.end()
    return out


def selectors(expr: str) -> list[Selector]:
    """The metric selectors of `expr`, with their matchers and the function applied to them."""
    toks = tokens(expr)
    found: list[Selector] = []
    i = 0
    while i < len(toks):
        kind, text = toks[i]
        nxt = toks[i + 1][1] if i + 1 < len(toks) else ""
        if text == "{":
            # a selector without a metric name ({__name__="..."}): a metric name's braces
            # are consumed with the name below
            close = _closing(toks, i, "{", "}")
            matchers = " ".join(t for _, t in toks[i + 1 : close])
            name = re.search(r"__name__ = \"([^\"]+)\"", matchers)
            if name is None:
                raise ValueError(f"a selector without a metric name in {expr!r}")
            found.append(Selector(name.group(1), matchers, _applied(toks, i)))
            i = close + 1
            continue
        if kind != "ident":
            i += 1
            continue
        word = text.lower()
        if word in _LABEL_LISTS and nxt == "(":
            i = _closing(toks, i + 1, "(", ")") + 1
            continue
        if nxt == "(" or word in _AGGREGATORS or word in _KEYWORDS or word in _LABEL_LISTS:
            i += 1
            continue
        matchers = ""
        end = i
        if nxt == "{":
            end = _closing(toks, i + 1, "{", "}")
            matchers = " ".join(t for _, t in toks[i + 2 : end])
        found.append(Selector(text, matchers, _applied(toks, i)))
        i = end + 1
    return found


def _closing(toks: list[tuple[str, str]], start: int, open_: str, close: str) -> int:
    assert toks[start][1] == open_
    depth = 0
    for j in range(start, len(toks)):
        if toks[j][1] == open_:
            depth += 1
        elif toks[j][1] == close:
            depth -= 1
            if depth == 0:
                return j
    raise ValueError(f"unbalanced {open_!r}")


def _applied(toks: list[tuple[str, str]], i: int) -> str | None:
    """`rate` for the selector at `i` in `rate(x[5m])`: the call it is the first argument of."""
    if i < 2 or toks[i - 1][1] != "(" or toks[i - 2][0] != "ident":
        return None
    name = toks[i - 2][1]
    return None if name.lower() in _KEYWORDS | _LABEL_LISTS else name


# ---------------------------------------------------------------- what the files hold
@dataclass(frozen=True)
class Query:
    where: str
    expr: str


def load_dashboard(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return data


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def dashboard_queries() -> list[Query]:
    found: list[Query] = []
    for path in DASHBOARDS:
        dashboard = load_dashboard(path)
        for panel in all_panels(dashboard):
            for target in panel.get("targets", []):
                where = f"{path.name}: panel {panel.get('title')!r} {target.get('refId')}"
                found.append(Query(where, target["expr"]))
        for variable in dashboard["templating"]["list"]:
            if variable.get("type") == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                inner = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
                assert inner, f"{path.name}: variable {variable['name']}: {text!r}"
                found.append(Query(f"{path.name}: variable {variable['name']}", inner.group(1)))
    return found


def alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in data["groups"] for rule in group["rules"]]


def alert_queries() -> list[Query]:
    return [Query(f"alerts.yml: {rule['alert']}", rule["expr"]) for rule in alert_rules()]


QUERIES = dashboard_queries() + alert_queries()


# ---------------------------------------------------------------- the reader itself
def test_reader_finds_metrics_and_skips_functions_labels_and_keywords() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(a_bucket{job=~"$job"}'
        "[$__rate_interval]))) / on (job) group_left sum without (x) (b_total offset 5m)"
        ' and {__name__="c"} > bool 0.5e3 unless d'
    )
    found = [(s.metric, s.function) for s in selectors(expr)]
    assert found == [("a_bucket", "rate"), ("b_total", None), ("c", None), ("d", None)]
    assert selectors("x and (y)")[1].function is None
    assert selectors('x{job=~"$job", outcome!="a"}')[0].matchers == 'job =~ "$job" , outcome != "a"'
    with pytest.raises(ValueError, match="cannot read"):
        selectors("rate(x[5m]) # not PromQL")


def test_exported_names_follow_the_exposition_format() -> None:
    assert EXPORTED["connector_records_consumed_total"].counts
    assert "connector_records_consumed" not in EXPORTED  # a counter is only read as _total
    assert EXPORTED["connector_batch_submit_duration_seconds_bucket"].counts
    assert "connector_batch_submit_duration_seconds" not in EXPORTED
    assert not EXPORTED["connector_pending_records"].counts


# ---------------------------------------------------------------- every query
def test_there_is_something_to_check() -> None:
    assert DASHBOARDS, "no dashboard JSON under dashboards/grafana/"
    assert len(QUERIES) > 30


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_every_query_names_only_exported_metrics(query: Query) -> None:
    found = selectors(query.expr)
    assert found, f"{query.where}: no metric in {query.expr!r}"
    for sel in found:
        if sel.metric in PROMETHEUS_SERIES:
            continue
        near = sorted(n for n, e in EXPORTED.items() if sel.metric.startswith(e.family))
        assert sel.metric in EXPORTED, (
            f"{query.where}: {sel.metric} is not a metric the connector exports"
            + (f" (did you mean one of {near}?)" if near else "")
        )


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_functions_fit_the_metric_type(query: Query) -> None:
    for sel in selectors(query.expr):
        metric = EXPORTED.get(sel.metric)
        if metric is None or sel.function is None:
            continue
        if sel.function in _COUNTER_FUNCTIONS:
            assert metric.counts, f"{query.where}: {sel.function}() of the gauge {sel.metric}"
        if sel.function in _GAUGE_FUNCTIONS:
            assert not metric.counts, f"{query.where}: {sel.function}() of the counter {sel.metric}"
    for sel in selectors(query.expr):
        metric = EXPORTED.get(sel.metric)
        if metric is not None and metric.counts and metric.kind == "counter":
            assert sel.function in _COUNTER_FUNCTIONS, (
                f"{query.where}: a counter's raw value means nothing; use rate() or increase()"
            )


@pytest.mark.parametrize("query", QUERIES, ids=[q.where for q in QUERIES])
def test_quantiles_come_from_bucket_rates_grouped_by_le(query: Query) -> None:
    for match in re.finditer(r"histogram_quantile\(\s*([\d.]+)\s*,\s*(.*)", query.expr):
        assert 0 < float(match.group(1)) < 1
        inner = match.group(2)
        grouping = re.match(r"sum by \(([^)]*)\)\s*\(rate\((\w+)", inner)
        assert grouping, f"{query.where}: expected sum by (le, ...) (rate(..._bucket[...]))"
        assert "le" in [label.strip() for label in grouping.group(1).split(",")]
        assert grouping.group(2).endswith("_bucket")


# ---------------------------------------------------------------- dashboards
@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_model(path: Path) -> None:
    dashboard = load_dashboard(path)
    assert dashboard.get("uid"), "set a uid, so links survive re-provisioning"
    assert dashboard["id"] is None, "a provisioned dashboard has no id"
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in all_panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_every_panel_uses_the_datasource_variable_and_filters_job_and_instance(
    path: Path,
) -> None:
    dashboard = load_dashboard(path)
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            continue
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        assert panel.get("description"), f"{title}: say what the panel shows"
        targets = panel["targets"]
        assert targets, title
        assert len({t["refId"] for t in targets}) == len(targets), title
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}", title
            expr = target["expr"]
            for sel in selectors(expr):
                assert 'job =~ "$job"' in sel.matchers, f"{title}: {sel.metric} without $job"
                assert 'instance =~ "$instance"' in sel.matchers, f"{title}: {sel.metric}"
            for window in re.findall(r"\[([^\]]+)\]", expr):
                assert window in ("$__rate_interval", "$__range"), (
                    f"{title}: use $__rate_interval (or $__range), not a fixed [{window}]"
                )


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_panels_do_not_overlap(path: Path) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in load_dashboard(path)["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0, panel["title"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = panel["title"]


def test_the_dashboard_shows_every_metric_the_connector_exports() -> None:
    used = {sel.metric for q in dashboard_queries() for sel in selectors(q.expr)}
    shown = {EXPORTED[name].family for name in used if name in EXPORTED}
    # the connector's own metrics (docs/design.md §3.5); process_* come from the client library
    missing = {e.family for e in EXPORTED.values() if e.family.startswith("connector_")} - shown
    assert not missing, f"no panel shows {sorted(missing)}"


def test_operations_doc_lists_every_metric() -> None:
    text = OPERATIONS_DOC.read_text(encoding="utf-8")
    missing = set()
    own = {e for e in EXPORTED.values() if e.family.startswith("connector_")}
    for metric in {e for e in own if not e.sample.endswith("_created")}:
        family = metric.family
        shown = family + ("_total" if metric.kind == "counter" else "")
        if f"`{shown}`" not in text:
            missing.add(shown)
    assert not missing, f"docs/operations.md does not describe {sorted(missing)}"


# ---------------------------------------------------------------- PromQL syntax, by Prometheus
def test_prometheus_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel query, with Grafana's variables filled in, as a recording rule for promtool."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian/Ubuntu: apt-get install prometheus)")
    rules = []
    for i, query in enumerate(dashboard_queries()):
        expr = _GRAFANA_INTERVAL.sub("5m", query.expr)
        expr = re.sub(r"\$\{?\w+\}?", "x", expr)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    done = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
