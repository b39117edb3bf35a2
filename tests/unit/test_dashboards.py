"""The Grafana dashboards and the Prometheus config in etc/ stay true to what /metrics exports."""

import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from ajr_supervisor.registry.metrics import METRIC_NAMES, MetricsSnapshot, render

ETC = Path(__file__).resolve().parents[2] / "etc"
DASHBOARDS = sorted((ETC / "grafana").glob("*.json"))
DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
             "unless", "inf", "nan"}
_CLAUSE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and variables stripped)."""
    names = set(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    text = _STRING.sub('""', expr)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)      # Grafana variables: ${x}, $x, $__rate_interval
    text = re.sub(r"\{[^}]*\}", " ", text)               # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)              # ranges and subqueries
    text = _CLAUSE.sub(" ", text)                        # by (le), on (node), group_left (x) ...
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        if not match.group(2) and match.group(1).lower() not in _KEYWORDS:
            names.add(match.group(1))
    return names


def variable_expr(query) -> str:
    """The PromQL inside a Grafana Prometheus variable query (label_values, query_result, ...)."""
    text = (query.get("query", "") if isinstance(query, dict) else query or "").strip()
    if m := re.fullmatch(r"label_values\((.*),\s*[A-Za-z_]\w*\s*\)", text, re.S):
        return m.group(1)
    if m := re.fullmatch(r"query_result\((.*)\)", text, re.S):
        return m.group(1)
    if re.fullmatch(r"(label_values\(\s*\w*\s*\)|label_names\(.*\)|metrics\(.*\))", text, re.S):
        return ""
    return text


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))   # rows hold their panels when collapsed


def expressions(dashboard: dict) -> list[str]:
    exprs = [t["expr"] for p in all_panels(dashboard["panels"]) for t in p.get("targets", []) if t.get("expr")]
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            exprs.append(variable_expr(var.get("query") or var.get("definition")))
    return [e for e in exprs if e]


def full_snapshot() -> MetricsSnapshot:
    return MetricsSnapshot(jobs_by_state={"running": 1}, anomalies={("CRASH", "GPU"): 1}, requeues_total=1,
                           detection_latency_s=[3.0], recovery_latency_s=[90.0], efficiency={"lab/1": 0.9},
                           efficiency_aggregate=0.9, outbox_backlog={"h1": 2}, nodes_drained=1, lemon_nodes=["n1"],
                           node_failures={"n1": 3}, events_ingested={"decision": 1}, notifications={"sent": 1})


def exported_samples() -> set[str]:
    body, _ = render(full_snapshot())
    return {s.name for family in text_string_to_metric_families(body.decode()) for s in family.samples}


def unknown_metrics(exprs: list[str]) -> dict[str, set[str]]:
    """expression -> its names that /metrics does not export: not a sample name in the rendered text,
    or neither in METRIC_NAMES nor a histogram's _bucket/_sum/_count of one."""
    samples = exported_samples()
    out = {}
    for expr in exprs:
        bad = {n for n in metric_names(expr)
               if n not in samples or not {n, re.sub(r"_(bucket|sum|count)$", "", n)} & METRIC_NAMES}
        if bad:
            out[expr] = bad
    return out


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


# ---- the extractor itself -------------------------------------------------------------------------

@pytest.mark.parametrize("expr, names", [
    ("ajr_efficiency_ratio", {"ajr_efficiency_ratio"}),
    ('bottomk(20, ajr_job_efficiency_ratio{cluster=~"$cluster", job_id!="a b"})', {"ajr_job_efficiency_ratio"}),
    ("histogram_quantile(0.95, sum by (le) (increase(ajr_detection_latency_seconds_bucket[$window])))",
     {"ajr_detection_latency_seconds_bucket"}),
    ("sum(ajr_x_sum) / sum without (instance) (ajr_x_count) > 1e3", {"ajr_x_sum", "ajr_x_count"}),
    ("rate(ajr_events_ingested_total[$__rate_interval] offset 5m)", {"ajr_events_ingested_total"}),
    ("ajr_a * on (node) group_left (state) ajr_b == bool 1 and ajr_c unless ajr_d",
     {"ajr_a", "ajr_b", "ajr_c", "ajr_d"}),
    ('{__name__="ajr_lemon_node"}', {"ajr_lemon_node"}),
    ("max_over_time(ajr_nodes_drained[1h:5m])", {"ajr_nodes_drained"}),
    ("topk(10, increase(ajr_node_failures_total[${window}]))", {"ajr_node_failures_total"}),
])
def test_metric_names_are_parsed_out_of_promql(expr, names):
    assert metric_names(expr) == names


def test_variable_queries_are_unwrapped():
    assert variable_expr("label_values(ajr_job_efficiency_ratio, cluster)") == "ajr_job_efficiency_ratio"
    assert variable_expr({"query": 'label_values(ajr_jobs{state="x"}, state)'}) == 'ajr_jobs{state="x"}'
    assert variable_expr("query_result(topk(5, ajr_node_failures_total))") == "topk(5, ajr_node_failures_total)"
    assert variable_expr("label_values(cluster)") == ""


def test_a_typo_in_a_metric_name_is_caught():
    wrong = ["increase(ajr_requeue_total[1h])", "ajr_efficiency",
             "histogram_quantile(0.5, rate(ajr_detection_latency_bucket[5m]))",
             "ajr_detection_latency_seconds",                         # a histogram has no bare series
             "ajr_nodes_drained_total", "ajr_lemon_node_count"]
    assert unknown_metrics(wrong) == {
        wrong[0]: {"ajr_requeue_total"}, wrong[1]: {"ajr_efficiency"}, wrong[2]: {"ajr_detection_latency_bucket"},
        wrong[3]: {"ajr_detection_latency_seconds"}, wrong[4]: {"ajr_nodes_drained_total"},
        wrong[5]: {"ajr_lemon_node_count"}}
    assert unknown_metrics(["sum(rate(ajr_recovery_latency_seconds_count[5m]))", "ajr_requeues_total"]) == {}


# ---- the dashboards ---------------------------------------------------------------------------------

def test_there_is_an_overview_dashboard():
    assert ETC / "grafana" / "ajr-overview.json" in DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_metric_in_the_dashboard_is_exported(path):
    exprs = expressions(load(path))
    assert len(exprs) >= 10
    assert unknown_metrics(exprs) == {}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_a_valid_grafana_dashboard(path):
    d = load(path)
    assert isinstance(d.get("uid"), str) and 0 < len(d["uid"]) <= 40 and d.get("title")
    assert 36 <= d["schemaVersion"] <= 41 and "__inputs" not in d   # provisioning cannot fill __inputs
    variables = {v["name"]: v for v in d["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    panels = list(all_panels(d["panels"]))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) for i in ids) and len(ids) == len(set(ids))
    cells = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] == "row":
            continue
        assert p.get("title") and p["datasource"] == DATASOURCE, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        assert all(t.get("datasource", DATASOURCE) == DATASOURCE and t.get("expr") for t in p["targets"]), p["title"]
    for var in variables.values():
        if var["type"] == "query":
            assert var["datasource"] == DATASOURCE


def test_the_dashboards_show_every_exported_metric():
    used = {re.sub(r"_(bucket|sum|count)$", "", n) for path in DASHBOARDS for e in expressions(load(path))
            for n in metric_names(e)}
    assert set(METRIC_NAMES) - used == set()


# ---- provisioning and Prometheus --------------------------------------------------------------------

def test_grafana_provisioning_files():
    ds = yaml.safe_load((ETC / "grafana/provisioning/datasources/ajr-prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1 and ds["datasources"][0]["type"] == "prometheus"
    dash = yaml.safe_load((ETC / "grafana/provisioning/dashboards/ajr.yaml").read_text())
    (provider,) = dash["providers"]
    assert dash["apiVersion"] == 1 and provider["type"] == "file" and provider["options"]["path"].startswith("/")
    readme = (ETC / "grafana/README.md").read_text()
    assert provider["options"]["path"] in readme and "provisioning/dashboards/ajr.yaml" in readme


def test_prometheus_scrapes_the_registry_metrics():
    config = yaml.safe_load((ETC / "prometheus/prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "ajr-registry"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["localhost:8787"]
    text = (ETC / "prometheus/prometheus.yml").read_text()
    assert "credentials_file:" in text and "metrics_open" in text     # the token, documented
