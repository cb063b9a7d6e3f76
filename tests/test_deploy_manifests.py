"""deploy/k8s/ and deploy/compose.yaml agree with the worker they deploy (docs/deploy.md).

They fail when the manifests drift from the code: an environment variable that is not a field of
streams/worker/settings.py (or a value it rejects), a probe or scrape path the worker does not
serve, a port that is not the one the worker listens on, a selector that selects nothing, a
secret or ConfigMap reference to nothing, more replicas than input partitions, a memory limit
below what REPMON_MAX_SCOPES needs, or a Prometheus scrape job named otherwise than the job the
alerting rules select.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from models.act.throttle_config import loads_config
from models.sim.scenarios import SCENARIOS
from streams.worker.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy/k8s"
COMPOSE = ROOT / "deploy/compose.yaml"
RULES = ROOT / "deploy/prometheus/rules/repmon.yml"
AM_CONFIG = ROOT / "deploy/alertmanager/alertmanager.yml"
SCRAPE_CONFIG = K8S / "prometheus/scrape-config.yml"

#: REPMON_* variable -> Settings field
SETTINGS_ENV = {f"REPMON_{name.upper()}": name for name in Settings.model_fields}


def worker_routes() -> set[str]:
    """The paths the worker's web server serves with app.page (streams/worker/app.py)."""
    src = (ROOT / "streams/worker/app.py").read_text()
    return set(re.findall(r'app\.page\("([^"]+)"\)', src))


def manifests() -> list[tuple[Path, dict[str, Any]]]:
    out = []
    for p in sorted(K8S.glob("*.yaml")):
        if p.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(p.read_text()):
            if doc is not None:
                out.append((p, doc))
    return out


def one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d
        for _, d in manifests()
        if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''} in {K8S}"
    return found[0]


def worker_set() -> dict[str, Any]:
    return one("StatefulSet", "repmon-worker")


def container() -> dict[str, Any]:
    (c,) = worker_set()["spec"]["template"]["spec"]["containers"]
    return c


def env_config() -> dict[str, str]:
    refs = [e["configMapRef"]["name"] for e in container().get("envFrom", [])]
    assert len(refs) == 1, refs
    data: dict[str, str] = one("ConfigMap", refs[0])["data"]
    return data


def settings_from(env: dict[str, str]) -> Settings:
    """The worker's Settings from these variables alone (validated as the worker would)."""
    kwargs = {SETTINGS_ENV[k]: v for k, v in env.items()}
    return Settings(_env_file=None, **kwargs)  # type: ignore[call-arg]


def port_number(port: str | int, c: dict[str, Any]) -> int:
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in c["ports"] if "name" in p}
    assert port in named, f"port {port!r} is not a named port of the container: {named}"
    return int(named[port])


def memory_bytes(q: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?", q)
    assert m, q
    unit = {
        None: 1,
        "k": 1e3,
        "M": 1e6,
        "G": 1e9,
        "T": 1e12,
        "Ki": 1024,
        "Mi": 1024**2,
        "Gi": 1024**3,
        "Ti": 1024**4,
    }
    return float(m.group(1)) * unit[m.group(2)]


# ---------------------------------------------------------------------------------------------
# Kubernetes


def test_every_manifest_parses_and_kustomize_applies_them_all() -> None:
    docs = manifests()
    assert docs
    for p, d in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(d), p
        assert d["metadata"].get("name"), p
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    resources = set(kust["resources"])
    files = {p.name for p, _ in docs}
    assert resources == files, "kustomization.yaml must list every manifest of deploy/k8s/"
    assert kust["namespace"] == one("Namespace")["metadata"]["name"]
    # the image the StatefulSet names is the one kustomize rewrites
    assert container()["image"] in {i["name"] for i in kust["images"]}


def test_env_names_are_worker_settings_and_the_values_validate() -> None:
    c = container()
    env = env_config()
    unknown = sorted(set(env) - set(SETTINGS_ENV))
    assert not unknown, f"not settings of streams/worker/settings.py: {unknown}"
    assert all(isinstance(v, str) for v in env.values()), "ConfigMap values must be strings"
    try:
        s = settings_from(env)
    except ValidationError as exc:  # pragma: no cover - the message is the point
        pytest.fail(f"the worker rejects the ConfigMap's settings:\n{exc}")
    # probes and scrapes come from outside the pod
    assert s.web_host == "0.0.0.0"
    names = [e["name"] for e in c.get("env", [])]
    assert not sorted(set(names) - set(SETTINGS_ENV)), names
    assert not set(names) & set(env), "a variable both in the ConfigMap and in env"


def test_probes_ports_and_scrape_annotations_match_the_worker() -> None:
    c = container()
    s = settings_from(env_config())
    routes = worker_routes()
    assert {"/livez", "/readyz", "/metrics"} <= routes, routes
    (port,) = [p for p in c["ports"] if p.get("name") == "http"]
    assert port["containerPort"] == s.web_port
    probes = {k: c[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["path"] == "/livez"
    assert probes["startupProbe"]["path"] == "/livez"
    assert probes["readinessProbe"]["path"] == "/readyz"
    for kind, probe in probes.items():
        assert probe["path"] in routes, (kind, probe)
        assert port_number(probe["port"], c) == s.web_port, (kind, probe)
    ann = worker_set()["spec"]["template"]["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true"
    assert int(ann["prometheus.io/port"]) == s.web_port
    assert ann["prometheus.io/path"] in routes
    assert ann["prometheus.io/path"] == "/metrics"


def test_service_and_budget_select_the_workers() -> None:
    sts = worker_set()
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = one("Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None", "a StatefulSet's governing Service is headless"
    assert svc["spec"]["selector"].items() <= labels.items()
    (sport,) = svc["spec"]["ports"]
    assert port_number(sport["targetPort"], container()) == settings_from(env_config()).web_port
    pdb = one("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_replicas_follow_the_input_partitions() -> None:
    s = settings_from(env_config())
    replicas = worker_set()["spec"]["replicas"]
    # ingest scales over the input partitions: a worker beyond them would idle; an even share
    assert 1 <= replicas <= s.topic_partitions
    assert s.topic_partitions % replicas == 0, (replicas, s.topic_partitions)


def test_instance_id_is_the_pod_name_and_the_token_a_secret() -> None:
    env = {e["name"]: e for e in container()["env"]}
    assert env["REPMON_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    ref = env["REPMON_API_TOKEN"]["valueFrom"]["secretKeyRef"]
    secret = one("Secret", ref["name"])
    assert ref["key"] in {**secret.get("stringData", {}), **secret.get("data", {})}


def test_files_and_data_dir_are_mounted() -> None:
    c = container()
    s = settings_from(env_config())
    pod = worker_set()["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {Path(m["mountPath"]): volumes[m["name"]] for m in c["volumeMounts"]}
    # the data directory is on a volume (an emptyDir: the state is in Kafka)
    assert any(Path(s.data_dir).is_relative_to(mp) for mp in mounts), s.data_dir
    # the throttle policy file is a key of a mounted ConfigMap, and the worker's loader takes it
    path = Path(s.throttle_config)
    vol = mounts[path.parent]
    data = one("ConfigMap", vol["configMap"]["name"])["data"]
    loads_config(data[path.name], f"{vol['configMap']['name']}/{path.name}")


def test_memory_limit_covers_max_scopes() -> None:
    """docs/configuration.md: RSS ~ 80 MiB + MAX_SCOPES x (4.4 KB + 0.7 KB per input partition
    read), allow 1.5x; the worst case is one pod reading every partition (the others down)."""
    s = settings_from(env_config())
    need = 1.5 * (80 * 1024**2 + s.max_scopes * (4400 + 700 * s.topic_partitions))
    limit = memory_bytes(container()["resources"]["limits"]["memory"])
    assert limit >= need, f"memory limit {limit / 2**30:.2f} GiB < {need / 2**30:.2f} GiB"


def rules_jobs() -> set[str]:
    return set(re.findall(r'job="([^"]+)"', RULES.read_text()))


def relabel(rules: list[dict[str, Any]], labels: dict[str, str]) -> dict[str, str] | None:
    """Prometheus relabelling (the keep and replace actions the scrape job uses)."""
    labels = dict(labels)
    for r in rules:
        sep = r.get("separator", ";")
        value = sep.join(labels.get(s, "") for s in r.get("source_labels", []))
        m = re.fullmatch(r.get("regex", "(.*)"), value)
        action = r.get("action", "replace")
        if action == "keep":
            if m is None:
                return None
        elif action == "replace":
            if m is not None:
                repl = re.sub(r"\$(\d+)", r"\\\1", r.get("replacement", "$1"))
                labels[r["target_label"]] = m.expand(repl)
        else:  # pragma: no cover
            raise AssertionError(f"relabel action {action} not simulated")
    return labels


def test_the_scrape_job_finds_the_workers_under_the_rules_job_name(tmp_path: Path) -> None:
    cfg = yaml.safe_load(SCRAPE_CONFIG.read_text())
    (job,) = cfg["scrape_configs"]
    # the alerting rules select the workers by this job name (RepmonPipelineDown, ...)
    assert rules_jobs() == {job["job_name"]}, rules_jobs()
    tmpl = worker_set()["spec"]["template"]["metadata"]
    meta = {"__address__": "10.0.0.7", "__meta_kubernetes_pod_name": "repmon-worker-0"}
    for k, v in tmpl["annotations"].items():
        key = re.sub(r"[^a-zA-Z0-9_]", "_", k)
        meta[f"__meta_kubernetes_pod_annotation_{key}"] = v
    for k, v in tmpl["labels"].items():
        meta[f"__meta_kubernetes_pod_label_{re.sub(r'[^a-zA-Z0-9_]', '_', k)}"] = v
    got = relabel(job["relabel_configs"], meta)
    assert got is not None, "the scrape job drops the worker pods"
    port = settings_from(env_config()).web_port
    assert got["__address__"] == f"10.0.0.7:{port}"
    assert got.get("__metrics_path__", job.get("metrics_path")) == "/metrics"
    assert got["instance"] == "repmon-worker-0"
    # another pod of the namespace is not scraped as a worker
    other = {k: v for k, v in meta.items() if "component" not in k}
    assert relabel(job["relabel_configs"], other) is None
    # the real parser on the job (Debian's Prometheus has no Kubernetes discovery compiled in:
    # the same job with static targets instead)
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus (./dev test installs it)")
    job = dict(job)
    job.pop("kubernetes_sd_configs")
    job["static_configs"] = [{"targets": ["10.0.0.7:6066"]}]
    p = tmp_path / "prometheus.yml"
    p.write_text(yaml.safe_dump({"scrape_configs": [job]}))
    res = subprocess.run([promtool, "check", "config", str(p)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# ---------------------------------------------------------------------------------------------
# compose


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def interpolated_default(text: str) -> str:
    """Compose's ${VAR:-default} with VAR unset."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", text)


def test_compose_runs_every_piece() -> None:
    services = compose()["services"]
    assert {"kafka", "worker", "simulate", "prometheus", "alertmanager", "grafana"} <= set(services)
    # the repository's monitoring files, mounted
    assert "./prometheus:/etc/prometheus:ro" in services["prometheus"]["volumes"]
    assert "./alertmanager:/etc/alertmanager:ro" in services["alertmanager"]["volumes"]


def test_compose_worker_env_and_ports_match_the_worker() -> None:
    services = compose()["services"]
    for name in ("worker", "simulate"):
        env = services[name].get("environment", {})
        unknown = sorted(set(env) - set(SETTINGS_ENV))
        assert not unknown, f"{name}: not settings of streams/worker/settings.py: {unknown}"
    env = {k: interpolated_default(str(v)) for k, v in services["worker"]["environment"].items()}
    s = settings_from(env)
    assert s.web_host == "0.0.0.0"
    container_ports = {int(p.rsplit(":", 1)[1]) for p in services["worker"]["ports"]}
    assert s.web_port in container_ports
    # Prometheus scrapes the worker service on that port
    prom = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] in rules_jobs()]
    assert job["static_configs"][0]["targets"] == [f"worker:{s.web_port}"]
    health = " ".join(services["worker"]["healthcheck"]["test"])
    path = re.search(rf"127\.0\.0\.1:{s.web_port}(/\w+)", health)
    assert path and path.group(1) in worker_routes(), health


def test_compose_event_source_is_repmon_simulate() -> None:
    sim = compose()["services"]["simulate"]
    cmd = interpolated_default(" ".join(sim["command"]))
    runs = re.findall(r"repmon simulate --scenario (\S+)", cmd)
    assert runs and all(sc in SCENARIOS for sc in runs), cmd
    assert sim["environment"]["REPMON_KAFKA_BOOTSTRAP"] == "kafka:9092"


def test_compose_page_log_is_where_the_shipped_receivers_post() -> None:
    """alert-log shares Alertmanager's network namespace and listens where the shipped
    receivers post (http://127.0.0.1:9095/<receiver>)."""
    log = compose()["services"]["alert-log"]
    assert log["network_mode"] == "service:alertmanager"
    am = yaml.safe_load(AM_CONFIG.read_text())
    urls = [h["url"] for r in am["receivers"] for h in r.get("webhook_configs", [])]
    assert urls and all(u.startswith("http://127.0.0.1:9095/") for u in urls), urls
    assert '("127.0.0.1", 9095)' in " ".join(log["command"])
