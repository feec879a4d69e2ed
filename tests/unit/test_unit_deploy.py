"""The deployment files, read and checked without Docker or Kubernetes: docker-compose.yml,
the Dockerfile, the kustomize base, the nginx templates, Prometheus and Grafana."""

from __future__ import annotations

import json
import re
import shlex

import pytest
import yaml

from signaling.config import Settings
from signaling.launcher import UPSTREAM_PARAMS, local_values, template_variables
from signaling.metrics import Metrics
from support import ROOT

NGINX = ROOT / "nginx"
BASE = ROOT / "deploy" / "base"


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def services() -> dict:
    return compose()["services"]


def templates_text() -> str:
    return "\n".join(p.read_text() for p in sorted((NGINX / "templates").rglob("*.template")))


def seconds(value: str | int | float) -> float:
    text = str(value)
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text):
        total += float(number) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "": 1}[unit]
    return total


def pinned(image: str) -> bool:
    """An exact version tag (x.y.z, optionally with a variant) or a digest; never latest."""
    if "@sha256:" in image:
        return True
    tag = image.rpartition(":")[2] if ":" in image.rpartition("/")[2] else ""
    return bool(re.fullmatch(r"v?\d+\.\d+\.\d+(-[a-z0-9.-]+)?", tag))


# -- docker-compose.yml ---------------------------------------------------------------

def test_compose_signaling_service_scales():
    s = services()["signaling"]
    assert "ports" not in s, "a fixed host port would stop `--scale signaling=N`"
    assert "container_name" not in s, "a fixed name would stop `--scale signaling=N`"
    assert s["expose"] == ["8080"]
    assert s["deploy"]["replicas"] >= 2


def test_compose_healthchecks_and_start_order():
    svc = services()
    for name in ("redis", "signaling", "nginx"):
        assert svc[name]["healthcheck"]["test"], name
    assert "/readyz" in " ".join(svc["signaling"]["healthcheck"]["test"])
    assert svc["signaling"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert svc["nginx"]["depends_on"]["signaling"]["condition"] == "service_healthy"


def test_compose_stop_grace_covers_the_drain():
    s = services()["signaling"]
    env = s["environment"]
    drain = float(env["SIGNALING_DRAIN_DELAY"]) + float(env["SIGNALING_DRAIN_WINDOW"])
    assert s.get("stop_signal", "SIGTERM") == "SIGTERM"
    # the node waits up to 15 s more for its sessions to end after the last close
    assert seconds(s["stop_grace_period"]) >= drain + 15


def test_compose_images_are_pinned_and_nginx_can_re_resolve():
    svc = services()
    for name, s in svc.items():
        if "image" in s and "build" not in s:
            assert pinned(s["image"]), f"{name}: {s['image']}"
    nginx = svc["nginx"]
    version = tuple(int(x) for x in re.search(r":(\d+)\.(\d+)\.(\d+)", nginx["image"]).groups())
    upstream = nginx["environment"]["NGINX_UPSTREAM_SERVERS"]
    # `server name resolve` is open-source nginx 1.27.3+ (Plus only before): Docker's DNS
    # re-resolved, so replicas scaled up get traffic and removed ones stop getting it
    assert re.fullmatch(r"server signaling:8080 resolve max_fails=0;", upstream)
    assert version >= (1, 27, 3)
    assert nginx["environment"]["NGINX_RESOLVER"] == "127.0.0.11"  # Docker's embedded DNS


def test_compose_nginx_renders_the_shipped_templates_with_every_variable():
    nginx = services()["nginx"]
    env = nginx["environment"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in nginx["volumes"]}
    assert mounts["/etc/nginx/templates"] == "./nginx/templates"
    assert mounts["/etc/nginx/nginx.conf"] == "./nginx/nginx.conf"
    needed = template_variables()
    assert needed <= set(env), needed - set(env)
    assert all(re.match(env["NGINX_ENVSUBST_FILTER"], name) for name in needed)
    assert needed == set(local_values("127.0.0.1:1", ["127.0.0.1:2"]))  # the launcher fills the same ones
    assert nginx["ports"], "nginx publishes the endpoint"


def test_compose_secrets_come_from_uncommitted_files():
    c = compose()
    for secret in c["secrets"].values():
        path = ROOT / secret["file"]
        ignore = (path.parent / ".gitignore").read_text().split()
        assert "*" in ignore, f"{secret['file']} could be committed"
    env = services()["signaling"]["environment"]
    assert "SIGNALING_JWT_SECRET" not in env and env["SIGNALING_JWT_SECRET_FILE"].startswith("/run/secrets/")
    assert "*" in (NGINX / "certs" / ".gitignore").read_text().split()


def test_compose_monitoring_profile():
    svc = services()
    assert svc["prometheus"]["profiles"] == ["monitoring"] and svc["grafana"]["profiles"] == ["monitoring"]
    for name in ("prometheus", "grafana"):
        assert all(p.startswith("127.0.0.1:") for p in svc[name]["ports"]), "dashboards are not public"
    assert "profiles" not in svc["signaling"] and "profiles" not in svc["nginx"]


def test_compose_runs_on_an_official_image_and_a_current_engine():
    svc = services()
    # nginx.conf's relative temp/ paths resolve under the image's prefix, /etc/nginx, which has no temp/
    assert "temp/" in (NGINX / "nginx.conf").read_text() and "/etc/nginx/temp" in svc["nginx"]["tmpfs"]
    for name, s in svc.items():
        for opt in s.get("security_opt", []):
            assert ":" not in opt, f"{name}: {opt} (the `:` separator is deprecated: no-new-privileges=true)"
    assert "no-new-privileges=true" in svc["signaling"]["security_opt"]


# -- Dockerfile ------------------------------------------------------------------------

def test_dockerfile_builds_offline():
    # `# syntax=` makes BuildKit pull a frontend image on every build
    assert not re.search(r"^#\s*syntax\s*=", (ROOT / "Dockerfile").read_text(), re.M | re.I)


def dockerfile() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            out.append((keyword.upper(), rest.strip()))
    return out


def test_dockerfile_base_is_pinned():
    lines = dockerfile()
    args = dict(rest.split("=", 1) for kw, rest in lines if kw == "ARG" and "=" in rest)
    froms = [rest.split()[0] for kw, rest in lines if kw == "FROM"]
    assert froms
    for image in froms:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert pinned(image), image


def test_dockerfile_runs_as_non_root_with_a_healthcheck():
    lines = dockerfile()
    last_from = max(i for i, (kw, _) in enumerate(lines) if kw == "FROM")
    users = [rest for kw, rest in lines[last_from:] if kw == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    health = [rest for kw, rest in lines if kw == "HEALTHCHECK"]
    assert health and "/healthz" in health[0]
    assert ("EXPOSE", "8080") in lines
    entry = [rest for kw, rest in lines if kw == "ENTRYPOINT"]
    assert entry and entry[0].startswith("["), "exec form, so SIGTERM reaches the node (its drain)"
    assert ("STOPSIGNAL", "SIGTERM") in lines


def test_dockerignore_keeps_the_context_small_and_secret_free():
    lines = [x for x in (ROOT / ".dockerignore").read_text().splitlines() if x and not x.startswith("#")]
    assert lines[0] == "*"
    allowed = {x[1:].rstrip("/") for x in lines if x.startswith("!")}
    # nginx's config ships in the package (signaling/nginx); its certs/ (private keys) never go in
    assert allowed == {"pyproject.toml", "README.md", "LICENSE", "signaling", "nginx/nginx.conf", "nginx/templates"}
    assert not any(x.startswith("nginx/certs") or x == "nginx" for x in allowed)


# -- Kubernetes ------------------------------------------------------------------------

def manifests() -> dict[str, dict]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    out = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


def kustomize_config() -> dict[str, str]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    (generator,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "signaling-config"]
    return dict(item.split("=", 1) for item in generator["literals"])


def container() -> dict:
    (c,) = manifests()["Deployment/signaling"]["spec"]["template"]["spec"]["containers"]
    return c


def test_k8s_base_lists_existing_files():
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    for name in kustomization["resources"]:
        assert (BASE / name).is_file(), name


def test_k8s_probes():
    c = container()
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["ports"][0]["containerPort"] == 8080


def test_k8s_termination_grace_covers_prestop_and_drain():
    spec = manifests()["Deployment/signaling"]["spec"]["template"]["spec"]
    command = container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    config = kustomize_config()
    drain = float(config["SIGNALING_DRAIN_DELAY"]) + float(config["SIGNALING_DRAIN_WINDOW"])
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + drain + 15  # the sessions' last goodbyes


def test_k8s_config_and_secret():
    config = kustomize_config()
    for name in config:
        assert name in {f"SIGNALING_{f.upper()}" for f in Settings.__dataclass_fields__}, name
    assert "SIGNALING_JWT_SECRET" not in config and config["SIGNALING_JWT_SECRET_FILE"].startswith("/run/secrets/")
    c = container()
    assert c["envFrom"][0]["configMapRef"]["name"] == "signaling-config"
    assert not any(kind.startswith("Secret/") for kind in manifests()), "no Secret with values in the base"
    spec = manifests()["Deployment/signaling"]["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == "signaling-secrets"
    example = yaml.safe_load((BASE / "secret.example.yaml").read_text())
    for value in example["stringData"].values():
        assert len(value.encode()) < 32, "the example must not be usable as a real JWT secret"


def test_k8s_security_context():
    pod = manifests()["Deployment/signaling"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    sc = container()["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True


def test_k8s_rollout_hpa_pdb_service_match_the_pods():
    m = manifests()
    deployment = m["Deployment/signaling"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = m["HorizontalPodAutoscaler/signaling"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "signaling"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    assert hpa["spec"]["behavior"]["scaleDown"]["policies"][0]["value"] == 1  # drain one pod at a time
    pdb = m["PodDisruptionBudget/signaling"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    service = m["Service/signaling"]
    assert service["spec"]["selector"].items() <= labels.items()


def test_k8s_redis_in_cluster_or_external():
    m = manifests()
    config = kustomize_config()
    assert config["SIGNALING_REDIS_URL"].startswith("redis://")
    if "StatefulSet/redis" in m:
        host = re.match(r"redis://([^:/]+)", config["SIGNALING_REDIS_URL"]).group(1)
        assert f"Service/{host}" in m
        args = m["StatefulSet/redis"]["spec"]["template"]["spec"]["containers"][0]["args"]
        assert "noeviction" in args
        assert pinned(m["StatefulSet/redis"]["spec"]["template"]["spec"]["containers"][0]["image"])


def test_k8s_metrics_are_scraped():
    annotations = manifests()["Deployment/signaling"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080" and annotations["prometheus.io/path"] == "/metrics"


def test_k8s_ingress_timeouts_above_the_heartbeat():
    annotations = manifests()["Ingress/signaling"]["metadata"]["annotations"]
    heartbeat = float(kustomize_config()["SIGNALING_HEARTBEAT"])
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > heartbeat
    assert float(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) > heartbeat


# -- nginx -------------------------------------------------------------------------------

def test_nginx_templates_use_braced_upper_case_variables_only():
    text = templates_text()
    # envsubst would also replace `$NAME`; nginx's own variables are lower case
    assert not re.findall(r"\$[A-Z][A-Z0-9_]*\b", text)
    assert template_variables() == set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)\}", text))


def test_nginx_proxies_websockets_correctly():
    text = templates_text()
    assert "proxy_http_version 1.1;" in text
    assert "proxy_set_header Upgrade $http_upgrade;" in text
    assert "proxy_set_header Connection $connection_upgrade;" in text
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s+close;", text)
    assert "least_conn;" in text
    assert "proxy_set_header X-Real-IP $remote_addr;" in text
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in text  # replaced: a client's own is never believed


def test_nginx_every_proxied_location_sets_the_forwarding_headers():
    # a location with any proxy_set_header of its own inherits none from the server level
    text = (NGINX / "templates" / "snippets" / "signaling-locations.conf.template").read_text()
    blocks = dict(re.findall(r"^location ([^{]+?) \{(.*?)^\}", text, re.M | re.S))
    proxied = {name: body for name, body in blocks.items() if "proxy_pass" in body}
    assert set(proxied) == {"= /ws", "@ws_again", "= /healthz", "/"}
    for name, body in proxied.items():
        for header in ("Host $host", "X-Real-IP $remote_addr", "X-Forwarded-For $remote_addr",
                       "X-Forwarded-Proto $scheme"):
            assert f"proxy_set_header {header};" in body, (name, header)


def test_nginx_timeouts_are_above_the_heartbeat():
    text = (NGINX / "templates" / "snippets" / "signaling-locations.conf.template").read_text()
    ws = text[text.index("location = /ws"):text.index("location = /healthz")]
    heartbeat = Settings().heartbeat
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        (value,) = re.findall(rf"{directive} (\S+);", ws)
        assert seconds(value) > heartbeat * 2, directive  # a ping and its pong cross every heartbeat
    # a removed replica's address answers nothing until the resolver's `valid` runs out, and
    # a scale-down by three can put three of them before a live one: 3 tries under 500 ms
    assert seconds(re.search(r"proxy_connect_timeout (\S+);", text).group(1)) <= 0.15
    valid = re.search(r"^resolver \S+ valid=(\S+)", templates_text(), re.M).group(1)
    assert seconds(valid) <= 1


def test_nginx_retries_only_the_handshake():
    text = templates_text()
    lines = re.findall(r"^\s*proxy_next_upstream [^;]*;", text, re.M)
    assert len(lines) == 4  # /ws, its second pass @ws_again, /healthz, /
    for line in lines:
        assert "non_idempotent" not in line  # never a request that may have had an effect
        assert "http_503" in line  # a draining / full / Redis-less node refuses before the upgrade
    assert "max_fails=0" in UPSTREAM_PARAMS  # see the template: failure counts and WebSockets


def test_nginx_limits_and_tls():
    text = templates_text()
    assert "limit_conn_zone $binary_remote_addr" in text and "limit_req_zone $binary_remote_addr" in text
    assert "limit_conn signaling_conn_per_ip ${NGINX_LIMIT_CONN};" in text
    assert "limit_req zone=signaling_handshakes_per_ip" in text
    tls = (NGINX / "templates" / "signaling-tls.conf.template").read_text()
    assert "ssl_certificate ${NGINX_TLS_CERT};" in tls and "ssl_certificate_key ${NGINX_TLS_KEY};" in tls
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in tls
    assert re.search(r"return 308 https://\$host\$request_uri;", text)
    assert "location = /healthz" in text


def test_nginx_never_logs_query_strings():
    main = (NGINX / "nginx.conf").read_text()
    log_format = main[main.index("log_format"):main.index("access_log")]
    for variable in ("$request ", "$request\"", "$request_uri", "$args", "$query_string", "$arg_"):
        assert variable not in log_format, variable
    assert "access_log /dev/stdout signaling;" in main
    assert "include conf.d/signaling*.conf;" in main  # not the image's default.conf


# -- Prometheus and Grafana ------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    names = set()
    for line in Metrics().render().decode().splitlines():
        m = re.match(r"# TYPE (\S+) (\w+)", line)
        if m:
            name, kind = m.groups()
            names.add(name)
            if kind == "histogram":
                names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    return names


def test_dashboard_queries_use_metrics_the_nodes_export():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "signaling.json").read_text())
    exported = exported_metric_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {name for e in exprs for name in re.findall(r"\bsignaling_[a-z_]+", e)}
    assert used <= exported, used - exported
    titles = " | ".join(p["title"].lower() for p in dashboard["panels"])
    for wanted in ("connections per node", "messages", "errors by code", "latency", "bus reconnects",
                   "queued", "expired", "draining"):
        assert wanted in titles, wanted
    assert any("histogram_quantile(0.5," in e for e in exprs) and any("histogram_quantile(0.99," in e for e in exprs)


def test_prometheus_discovers_every_replica_and_grafana_is_provisioned():
    prom = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "signaling"]
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["signaling"] and sd["type"] == "A" and sd["port"] == 8080
    datasources = yaml.safe_load((ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "dashboards" / "signaling.json").read_text())
    assert {p["datasource"]["uid"] for p in dashboard["panels"]} == {uid}
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/signaling.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2][::-1] for v in services()["grafana"]["volumes"])
    assert mounts[path] == "./deploy/grafana/dashboards"


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "deploy").rglob("*.y*ml")))
def test_every_yaml_file_parses(path):
    assert list(yaml.safe_load_all((ROOT / path).read_text()))


def test_readme_documents_operating_the_cluster():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Operating a cluster"):]
    for words in ("signaling cluster --nodes 3", "docker compose up", "--scale signaling=", "rolling restart",
                  "docker compose logs", "monitoring", "resolve", "1.27.3", "nginx -s reload", "kubectl apply -k"):
        assert words in section, words
    assert shlex.split("signaling cluster --nodes 3")  # the documented command parses
