"""Every YAML under deploy/kubernetes/ validates, strictly, against the real Kubernetes API
schemas of the version docs/deployment.md names (``kubernetes-validate`` ships them, so no
cluster and no download), and the manifests agree with each other and with the code:
selectors match labels, probes and Services name real ports, resource quantities parse, the
containers' arguments parse with seekwatch's own command line, alertd's ConfigMap is a valid
alertd config, the HPA's metric is the node's queue-depth metric and the Prometheus adapter
serves it, and the scrape config passes ``promtool check config``."""
from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
FILES = sorted(K8S.glob("*.yaml")) + sorted(K8S.glob("*.yml"))
#: the Kubernetes version the manifests target (docs/deployment.md, section 3)
KUBERNETES_VERSION = "1.33"
#: kustomize's own file is no Kubernetes API object (no schema ships for it): the fields it may use
KUSTOMIZATION_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "labels", "commonLabels",
                        "commonAnnotations", "patches", "configMapGenerator", "secretGenerator"}
#: the API server's quantity grammar (the schema only says "string or number")
QUANTITY = re.compile(r"^[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|M|G|T|P|E)?$")


def docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def all_docs() -> list[tuple[str, dict]]:
    return [(p.name, d) for p in FILES for d in docs(p)]


def find(kind: str, name: str | None = None) -> list[dict]:
    return [d for _, d in all_docs() if d.get("kind") == kind and (name is None or d["metadata"]["name"] == name)]


def one(kind: str, name: str) -> dict:
    found = find(kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def validate(d: dict) -> None:
    """Strict validation (unknown fields are errors) against the real schema of ``d``'s kind."""
    kubernetes_validate.validate(d, KUBERNETES_VERSION, strict=True)


def test_the_docs_name_the_validated_version():
    text = (REPO / "docs" / "deployment.md").read_text(encoding="utf-8")
    assert f"Kubernetes {KUBERNETES_VERSION}" in text


def test_there_are_manifests():
    assert len(FILES) >= 8
    kinds = {d["kind"] for _, d in all_docs()}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "ConfigMap", "NetworkPolicy",
            "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_each_yaml_validates(path):
    found = docs(path)
    assert found, f"{path.name}: no YAML document"
    for d in found:
        if d.get("kind") == "Kustomization":
            assert d["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
            assert set(d) <= KUSTOMIZATION_FIELDS, f"{path.name}: unknown fields {set(d) - KUSTOMIZATION_FIELDS}"
            assert d["resources"] and all(isinstance(r, str) for r in d["resources"])
            continue
        try:
            validate(d)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{path.name}: {d.get('kind')} {d['metadata'].get('name')}: "
                        f"{'.'.join(map(str, exc.path))}: {exc.message}", pytrace=False)
        if d["kind"] != "Namespace":
            ns = d["metadata"].get("namespace")
            assert ns in ("seekwatch", "monitoring"), f"{path.name}: {d['kind']} without an explicit namespace"


def _quantities(obj) -> list[object]:
    """Every value of a ``resources.requests``/``limits`` map or a storage request, anywhere in ``obj``."""
    out: list[object] = []
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in ("requests", "limits") and isinstance(v, dict):
                out += list(v.values())
            else:
                out += _quantities(v)
    elif isinstance(obj, list):
        for v in obj:
            out += _quantities(v)
    return out


def test_resource_quantities_parse():
    found = [q for _, d in all_docs() for q in _quantities(d.get("spec", {}))]
    assert found
    for q in found:
        assert isinstance(q, int) or QUANTITY.match(str(q)), f"{q!r} is not a Kubernetes quantity"


def test_validation_catches_mistakes():
    """Strict enough to matter: typical slips are rejected."""
    dep = one("Deployment", "deepseek-service")
    validate(dep)
    bad = copy.deepcopy(dep)
    bad["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] = True  # unquoted
    bad2 = copy.deepcopy(dep)
    bad2["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}  # typo
    bad3 = copy.deepcopy(dep)
    bad3["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"  # a name, not a number
    for b in (bad, bad2, bad3):
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(b)
    assert not QUANTITY.match("one")  # resources.limits["nvidia.com/gpu"] = "one" fails test_resource_quantities_parse


def _containers(dep: dict) -> dict[str, dict]:
    return {c["name"]: c for c in dep["spec"]["template"]["spec"]["containers"]}


def _cron_jobs() -> list[dict]:
    """Each CronJob's job template, shaped as the Job it creates."""
    return [{"kind": "Job", "metadata": c["metadata"], "spec": c["spec"]["jobTemplate"]["spec"]}
            for c in find("CronJob")]


@pytest.mark.parametrize("dep", find("Deployment") + find("Job") + _cron_jobs(), ids=lambda d: d["metadata"]["name"])
def test_workload_consistency(dep):
    spec = dep["spec"]
    tmpl = spec["template"]
    if dep["kind"] == "Deployment":
        sel = spec["selector"]["matchLabels"]
        assert sel.items() <= tmpl["metadata"]["labels"].items(), "selector does not match the pod labels"
    volumes = {v["name"]: v for v in tmpl["spec"].get("volumes", [])}
    pvcs = {d["metadata"]["name"] for d in find("PersistentVolumeClaim")}
    configmaps = {d["metadata"]["name"] for d in find("ConfigMap")}
    for v in volumes.values():
        if "persistentVolumeClaim" in v:
            assert v["persistentVolumeClaim"]["claimName"] in pvcs
        if "configMap" in v:
            assert v["configMap"]["name"] in configmaps
    for c in _containers(dep).values():
        names = {p.get("name") for p in c.get("ports", [])}
        numbers = {p["containerPort"] for p in c.get("ports", [])}
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            if probe in c and "httpGet" in c[probe]:
                port = c[probe]["httpGet"]["port"]
                assert port in names or port in numbers, f"{c['name']}.{probe}: port {port!r} not declared"
        for m in c.get("volumeMounts", []):
            assert m["name"] in volumes, f"{c['name']}: mount of undeclared volume {m['name']}"


def test_node_deployment_serves_the_model_from_a_volume_on_a_gpu():
    dep = one("Deployment", "deepseek-service")
    assert dep["spec"]["replicas"] == 3
    pod = dep["spec"]["template"]
    node = _containers(dep)["node"]
    assert int(node["resources"]["limits"]["nvidia.com/gpu"]) == 1
    assert node["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert node["livenessProbe"]["httpGet"]["path"] == "/healthz"
    ann = pod["metadata"]["annotations"]
    port = next(p["containerPort"] for p in node["ports"] if p["name"] == "http")
    assert ann["prometheus.io/scrape"] == "true" and ann["prometheus.io/port"] == str(port)
    assert ann["prometheus.io/path"] == "/metrics"
    # the model comes from a volume, not from an s3:// environment variable
    assert not any(str(e.get("value", "")).startswith("s3://") for e in node.get("env", []))
    model_mount = next(m for m in node["volumeMounts"] if m["mountPath"] == "/models")
    vol = next(v for v in pod["spec"]["volumes"] if v["name"] == model_mount["name"])
    assert "persistentVolumeClaim" in vol and model_mount["readOnly"] is True


def _parse(args: list[str]):
    from seekwatch.cli import build_parser

    return build_parser(args).parse_args(args)  # the parser of the chosen subcommand, as `seekwatch` builds it


def test_container_arguments_parse_with_the_real_cli(tmp_path):
    node_dep = one("Deployment", "deepseek-service")
    c = _containers(node_dep)
    node_args = _parse(c["node"]["args"])
    assert node_args.command == "serve"
    assert node_args.host == "0.0.0.0" and node_args.port == 8000
    assert node_args.model.startswith("/models/")
    ship = _parse(c["shipper"]["args"])
    assert ship.command == "ship" and ship.logs == "/var/log/seekwatch"
    assert ship.logs == node_args.log_dir        # the sidecar reads what the node writes
    cron = one("CronJob", "seekwatch-log-retention")
    ret = _parse(cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert ret.command == "es-retention" and ret.retention_days == 180 and ret.url == ship.url
    alertd = _containers(one("Deployment", "seekwatch-alertd"))["alertd"]
    a = _parse(alertd["args"])
    assert a.command == "alertd"
    # the config path is where the ConfigMap is mounted
    mount = next(m for m in alertd["volumeMounts"] if m["name"] == "config")
    assert a.config == mount["mountPath"] + "/alerts.yaml"


def test_alertd_configmap_is_a_valid_alertd_config(tmp_path):
    from monitor.alerting.config import load_config

    cm = one("ConfigMap", "seekwatch-alertd")
    f = tmp_path / "alerts.yaml"
    f.write_text(cm["data"]["alerts.yaml"])
    cfg = load_config(f)
    assert cfg.prometheus_url and cfg.mode == "promql"
    scrape = yaml.safe_load(one("ConfigMap", "seekwatch-prometheus-scrape")["data"]["prometheus.yml"])
    jobs = {j["job_name"] for j in scrape["scrape_configs"]}
    assert cfg.prometheus_job in jobs, "alertd's prometheus_job must be the nodes' scrape job"
    # alertd's metrics port is the one its pod declares and the scrape annotation names
    dep = one("Deployment", "seekwatch-alertd")
    port = int(cfg.metrics_listen.rsplit(":", 1)[1])
    assert port in {p["containerPort"] for p in _containers(dep)["alertd"]["ports"]}
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
    # the scaling capacity is the node's batch size
    node_args = _parse(_containers(one("Deployment", "deepseek-service"))["node"]["args"])
    assert cfg.rules["scaling"]["capacity"] == node_args.max_batch


def test_service_selects_the_node_pods():
    svc = one("Service", "deepseek-service")
    dep = one("Deployment", "deepseek-service")
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items()
    node = _containers(dep)["node"]
    port_names = {p["name"] for p in node["ports"]}
    for p in svc["spec"]["ports"]:
        assert p["targetPort"] in port_names or p["targetPort"] in {q["containerPort"] for q in node["ports"]}


def test_hpa_scales_on_queue_depth_through_the_adapter():
    from contracts import metrics as M

    hpa = one("HorizontalPodAutoscaler", "deepseek-service")
    ref = hpa["spec"]["scaleTargetRef"]
    assert ref["kind"] == "Deployment" and one("Deployment", ref["name"])
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert names == [M.REQUESTS_WAITING]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    # the scaling rule: +2 up, -1 down
    assert hpa["spec"]["behavior"]["scaleUp"]["policies"][0]["value"] == 2
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1
    adapter = yaml.safe_load(one("ConfigMap", "prometheus-adapter")["data"]["config.yaml"])
    served = {}
    for rule in adapter["rules"]:
        assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        served[rule["name"]["as"]] = rule
    assert M.REQUESTS_WAITING in served
    assert M.REQUESTS_WAITING in served[M.REQUESTS_WAITING]["seriesQuery"]
    # the series carry namespace/pod labels because the scrape config adds them
    scrape = yaml.safe_load(one("ConfigMap", "seekwatch-prometheus-scrape")["data"]["prometheus.yml"])
    job = next(j for j in scrape["scrape_configs"] if j["job_name"] == "seekwatch")
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "pod"} <= targets


def test_networkpolicy_selects_the_node_pods_and_port():
    np = one("NetworkPolicy", "deepseek-service")
    dep = one("Deployment", "deepseek-service")
    assert np["spec"]["podSelector"]["matchLabels"].items() <= dep["spec"]["template"]["metadata"]["labels"].items()
    ports = {p["port"] for rule in np["spec"]["ingress"] for p in rule["ports"]}
    assert ports == {8000}
    nextchat = one("Deployment", "nextchat")
    sources = [f.get("podSelector", {}).get("matchLabels") for rule in np["spec"]["ingress"] for f in rule["from"]]
    assert any(s and s.items() <= nextchat["spec"]["template"]["metadata"]["labels"].items() for s in sources)


def test_nextchat_points_at_the_node_service():
    nc = _containers(one("Deployment", "nextchat"))["nextchat"]
    env = {e["name"]: e for e in nc["env"]}
    url = env["DEEPSEEK_URL"]["value"]
    assert url.startswith("http://deepseek-service.") and url.endswith(":8000") and "/v1" not in url
    assert "secretKeyRef" in env["DEEPSEEK_API_KEY"]["valueFrom"]


def test_kustomization_lists_the_manifests():
    k = docs(K8S / "kustomization.yaml")[0]
    listed = set(k["resources"])
    present = {p.name for p in FILES} - {"kustomization.yaml", "model-loader-job.yaml"}
    assert listed == present


def test_scrape_config_passes_promtool(tmp_path):
    """Debian's promtool is built without Kubernetes service discovery, so the discovery block
    is swapped for a static target; everything else (relabel regexes, job names) is checked."""
    cfg = yaml.safe_load(one("ConfigMap", "seekwatch-prometheus-scrape")["data"]["prometheus.yml"])
    for job in cfg["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs")[0]["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
    f = tmp_path / "prometheus.yml"
    f.write_text(yaml.safe_dump(cfg))
    r = subprocess.run(["promtool", "check", "config", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def test_ingress_routes_to_services_over_tls():
    ing = one("Ingress", "seekwatch")
    tls_hosts = {h for t in ing["spec"]["tls"] for h in t["hosts"]}
    services = {d["metadata"]["name"]: d for d in find("Service")}
    for rule in ing["spec"]["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        for path in rule["http"]["paths"]:
            svc = path["backend"]["service"]
            assert svc["name"] in services, svc
            port_names = {p.get("name") for p in services[svc["name"]]["spec"]["ports"]}
            assert svc["port"].get("name") in port_names
    assert {r["http"]["paths"][0]["backend"]["service"]["name"] for r in ing["spec"]["rules"]} == {"nextchat", "deepseek-service"}
    # SSE must not be buffered by the proxy
    assert ing["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
