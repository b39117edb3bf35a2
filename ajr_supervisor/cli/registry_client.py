"""``ajr nodes`` and ``ajr kpi``: node reputation and training-time efficiency from the registry.

Both read the central registry over HTTP (``GET {url}/api/v1/nodes``, ``GET {url}/api/v1/kpis``)
with ``Authorization: Bearer <token>``. The URL comes from ``--url``, ``$AJR_REGISTRY_URL`` or the
config's ``registry_url``; the token from ``--token``, ``$AJR_REGISTRY_TOKEN`` or the file named by
the config's ``registry_token_file``. Every failure (no URL, connection refused, timeout, 401/403/404,
an answer that is not JSON) is a :class:`RegistryClientError` with one line and a hint.
This module is the only CLI module that talks HTTP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import click

from ajr_supervisor.errors import AjrError, UsageError

DEFAULT_TIMEOUT_S = 10.0
DOWNTIME_COLUMNS = (("DETECT", "detection_s"), ("SHUTDOWN", "shutdown_s"), ("QUEUE", "queue_wait_s"),
                    ("RESTART", "restart_to_first_step_s"), ("LOST", "lost_work_s"))


class RegistryClientError(AjrError):
    """The registry could not be asked, or refused, or answered something unreadable."""


class RegistryAuthError(RegistryClientError):
    """401/403: no token, a wrong one, or one without the needed role."""


class RegistryClient:
    """A few read-only GETs against the registry API; ``requests`` is imported on first use."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s

    def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        """The decoded JSON of ``GET {url}{path}``, else :class:`RegistryClientError`."""
        import requests

        where = f"{self.url}{path}"
        headers = {"Accept": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            resp = requests.get(where, params=dict(params or {}), headers=headers, timeout=self.timeout_s)
        except requests.Timeout:
            raise RegistryClientError(f"the registry at {self.url} did not answer within {self.timeout_s:g} s",
                                      "check that it is up and reachable, or pass a larger --timeout-s") from None
        except requests.ConnectionError as exc:
            why = "connection refused" if "refused" in str(exc).lower() else "cannot connect"
            raise RegistryClientError(f"cannot reach the registry at {self.url} ({why})",
                                      "check --url / registry_url and that `ajr registry serve` runs there") from None
        except requests.RequestException as exc:
            raise RegistryClientError(f"request to {where} failed: {type(exc).__name__}: {exc}",
                                      "check --url / registry_url") from None
        return self._decoded(resp, where)

    def _decoded(self, resp, where: str) -> Any:
        try:
            body = resp.json()
        except ValueError:
            body = None
            if resp.ok:
                kind = resp.headers.get("Content-Type", "no content type")
                raise RegistryClientError(f"the answer from {where} is not JSON (HTTP {resp.status_code}, {kind})",
                                          "check that --url / registry_url points at the ajr registry")
        detail = body.get("detail") if isinstance(body, dict) else None
        detail = f": {detail}" if isinstance(detail, str) and detail else f" (HTTP {resp.status_code})"
        if resp.status_code == 401:
            raise RegistryAuthError(f"the registry refused the request: not authenticated{detail}",
                                    "pass --token, set AJR_REGISTRY_TOKEN, or set registry_token_file in the config")
        if resp.status_code == 403:
            raise RegistryAuthError(f"the registry refused the request: forbidden{detail}",
                                    "use a token whose role may read nodes and KPIs")
        if resp.status_code == 404:
            raise RegistryClientError(f"not found at {where}{detail}",
                                      "check the job id, and that the registry is recent enough for this command")
        if not resp.ok:
            raise RegistryClientError(f"the registry answered HTTP {resp.status_code} for {where}{detail}",
                                      "see the registry's log")
        return body


def _client(url: str | None, token: str | None, config_path: Path | None, timeout_s: float) -> RegistryClient:
    """Fill the URL and token from the config when the options and environment left them out."""
    if not url or not token:
        from ajr_supervisor.config import load_config

        config = load_config(config_path)
        url = url or config.registry_url
        if not token and config.registry_token_file:
            try:
                token = Path(config.registry_token_file).read_text(encoding="utf-8").strip() or None
            except (OSError, UnicodeDecodeError) as exc:
                why = getattr(exc, "strerror", None) or "not UTF-8 text"
                raise UsageError(f"cannot read the registry token file {config.registry_token_file} ({why})",
                                 "fix registry_token_file in the config, or pass --token") from None
    if not url:
        raise UsageError("no registry URL configured",
                         "pass --url, set AJR_REGISTRY_URL, or set registry_url in the ajr config")
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"registry URL {url!r} is not an http(s) URL", "give e.g. http://registry.example:8787")
    return RegistryClient(url, token, timeout_s)


def _answer(body: Any, key: str, where: str) -> Any:
    if not isinstance(body, dict) or key not in body:
        raise RegistryClientError(f"the registry's answer for {where} has no {key!r}",
                                  "the registry and this ajr may be different versions")
    return body[key]


def render_table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> str:
    """Columns padded to their widest cell; ``right[i]`` right-aligns column i (numbers)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).rjust(w) if r else str(c).ljust(w) for c, w, r in zip(row, widths, right)).rstrip()
             for row in [header, *rows]]
    return "\n".join(lines)


def duration(seconds: Any) -> str:
    """``45s``, ``12m05s``, ``3h07m``; ``-`` for unknown."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "-"
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _hours(seconds: Any) -> str:
    return f"{seconds / 3600:.2f}" if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else "-"


def _percent(value: Any) -> str:
    return f"{value * 100:.1f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"


def _jobs_cell(jobs: Any, shown: int = 3) -> str:
    jobs = [str(j) for j in jobs] if isinstance(jobs, list) else []
    return ",".join(jobs[:shown]) + (f" +{len(jobs) - shown}" if len(jobs) > shown else "") or "-"


def render_nodes(nodes: Sequence[Mapping]) -> str:
    header = ("NODE", "FAILURES", "BY COMPONENT", "JOBS", "SCORE", "DRAINED", "LEMON")
    rows = []
    for n in nodes:
        by = n.get("failures_by_component") or {}
        score = n.get("score")
        rows.append((str(n.get("node", "?")), str(n.get("failures", "-")),
                     ",".join(f"{k}:{v}" for k, v in sorted(by.items())) or "-", _jobs_cell(n.get("jobs")),
                     f"{score:.2f}" if isinstance(score, (int, float)) else "-",
                     "yes" if n.get("drained_by_ajr") else "no", "LEMON" if n.get("lemon") else ""))
    return render_table(header, rows, (False, True, False, False, True, False, False))


def _kpi_row(label: str, k: Mapping) -> tuple[str, ...]:
    down = k.get("downtime") if isinstance(k.get("downtime"), dict) else {}
    return (label, _percent(k.get("efficiency")), _hours(k.get("allocated_s")), _hours(k.get("productive_s")),
            str(k.get("requeues", "-")), *(duration(down.get(key)) for _, key in DOWNTIME_COLUMNS))


def render_kpis(jobs: Sequence[Mapping], aggregate: Mapping | None) -> str:
    header = ("JOB", "EFF %", "ALLOC h", "PROD h", "REQUEUES", *(name for name, _ in DOWNTIME_COLUMNS))
    rows = [_kpi_row(f"{j.get('cluster', '?')}/{j.get('job_id', '?')}", j) for j in jobs]
    if aggregate is not None:
        rows.append(_kpi_row(f"TOTAL ({aggregate.get('jobs', len(jobs))} jobs)", aggregate))
    return render_table(header, rows, (False, *([True] * (len(header) - 1))))


def _select_job(jobs: list, wanted: str) -> dict:
    cluster, _, job_id = wanted.rpartition("/")
    if not job_id:
        raise UsageError(f"--job {wanted!r} is not CLUSTER/JOBID", "e.g. --job lab/1234")
    found = [j for j in jobs if isinstance(j, dict) and str(j.get("job_id")) == job_id
             and (not cluster or j.get("cluster") == cluster)]
    if not found:
        raise RegistryClientError(f"the registry has no KPIs for job {wanted}",
                                  "check the cluster name and job id (ajr kpi lists every job)")
    if len(found) > 1:
        names = ", ".join(f"{j.get('cluster')}/{job_id}" for j in found)
        raise UsageError(f"job {job_id} is on several clusters ({names})", "give --job CLUSTER/JOBID")
    return found[0]


def _common(fn: Callable) -> Callable:
    options = [
        click.option("--url", envvar="AJR_REGISTRY_URL", default=None,
                     help="Registry URL [env AJR_REGISTRY_URL; default: the config's registry_url]."),
        click.option("--token", envvar="AJR_REGISTRY_TOKEN", default=None,
                     help="Bearer token [env AJR_REGISTRY_TOKEN; default: the config's registry_token_file]."),
        click.option("--json", "as_json", is_flag=True, help="Print the registry's JSON."),
        click.option("--timeout-s", type=click.FloatRange(min=0, min_open=True), default=DEFAULT_TIMEOUT_S,
                     show_default=True, help="Give up on the registry after this many seconds."),
        click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="The ajr config file (default: $AJR_CONFIG, else /etc/ajr/ajr.yaml)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


@click.command("nodes")
@click.option("--lemons", is_flag=True, help="Only lemons: nodes failing several different jobs lately.")
@_common
def nodes(lemons: bool, url: str | None, token: str | None, as_json: bool, timeout_s: float,
          config_path: Path | None) -> None:
    """Node reputation from the registry: failures blamed on each node, decayed score, drains, lemons."""
    client = _client(url, token, config_path, timeout_s)
    body = client.get("/api/v1/nodes", {"lemon": "true"} if lemons else None)
    found = _answer(body, "nodes", "/api/v1/nodes")
    if not isinstance(found, list):
        raise RegistryClientError("the registry's 'nodes' is not a list", "the registry and this ajr may differ")
    if lemons:
        found = [n for n in found if isinstance(n, dict) and n.get("lemon")]
    if as_json:
        click.echo(json.dumps({"nodes": found}, indent=2, sort_keys=True))
    elif not found:
        click.echo("no lemon nodes" if lemons else "no node has a failure or a drain on record")
    else:
        click.echo(render_nodes([n for n in found if isinstance(n, dict)]))


@click.command("kpi")
@click.option("--job", "job", default=None, metavar="CLUSTER/JOBID", help="One job only.")
@_common
def kpi(job: str | None, url: str | None, token: str | None, as_json: bool, timeout_s: float,
        config_path: Path | None) -> None:
    """Training-time efficiency (productive / allocated time) and downtime, per job and in total."""
    if job is not None and not job.rpartition("/")[2]:
        raise UsageError(f"--job {job!r} is not CLUSTER/JOBID", "e.g. --job lab/1234")
    client = _client(url, token, config_path, timeout_s)
    params = None
    if job is not None:
        cluster, _, job_id = job.rpartition("/")
        params = {"job_id": job_id, **({"cluster": cluster} if cluster else {})}
    body = client.get("/api/v1/kpis", params)
    jobs = _answer(body, "jobs", "/api/v1/kpis")
    if not isinstance(jobs, list):
        raise RegistryClientError("the registry's 'jobs' is not a list", "the registry and this ajr may differ")
    if job is not None:
        one = _select_job(jobs, job)
        click.echo(json.dumps(one, indent=2, sort_keys=True) if as_json else render_kpis([one], None))
        return
    aggregate = body.get("aggregate") if isinstance(body.get("aggregate"), dict) else None
    if as_json:
        click.echo(json.dumps(body, indent=2, sort_keys=True))
    elif not jobs:
        click.echo("the registry has no jobs yet")
    else:
        click.echo(render_kpis([j for j in jobs if isinstance(j, dict)], aggregate))


COMMANDS = [nodes, kpi]
