"""The k8s Ingress (deploy/base/ingress.yaml) publishes only the public endpoints and keeps
query strings (tokens) out of ingress-nginx's access log (issue 11, item 9)."""

from __future__ import annotations

import re

import pytest
import yaml

from support import ROOT

BASE = ROOT / "deploy" / "base"
PUBLIC = ["/ws", "/healthz", "/", "/client.js", "/client.d.ts"]  # what browsers and clients use
PRIVATE = ["/metrics", "/readyz"]  # Prometheus and the kubelet reach the pods directly
# a query string is in $request, $request_uri, $args / $query_string / $arg_*, and in a Referer
QUERY_VARIABLES = re.compile(r"\$(request(_uri)?|args|query_string|arg_\w+|http_referer)\b")


def ingress() -> dict:
    (doc,) = [d for d in yaml.safe_load_all((BASE / "ingress.yaml").read_text()) if d["kind"] == "Ingress"]
    return doc


def path_matches(rule_path: str, path_type: str, request_path: str) -> bool:
    """Kubernetes Ingress path matching: Exact is string equality; Prefix matches whole
    path elements ("/foo" matches "/foo" and "/foo/bar", not "/foobar"); ingress-nginx
    reads ImplementationSpecific as an nginx prefix location (plain string prefix)."""
    if path_type == "Exact":
        return request_path == rule_path
    if path_type == "Prefix":
        rule = [e for e in rule_path.split("/") if e]
        return [e for e in request_path.split("/") if e][:len(rule)] == rule
    return request_path.startswith(rule_path)


def routed(request_path: str) -> bool:
    spec = ingress()["spec"]
    if "defaultBackend" in spec:
        return True  # everything no rule matches goes there
    return any(path_matches(p["path"], p["pathType"], request_path)
               for rule in spec["rules"] for p in rule["http"]["paths"])


@pytest.mark.parametrize("rule_path, path_type, request_path, expected", [
    ("/", "Prefix", "/metrics", True),
    ("/foo", "Prefix", "/foo/bar", True),
    ("/foo", "Prefix", "/foobar", False),
    ("/foo/", "Prefix", "/foo", True),
    ("/", "Exact", "/metrics", False),
    ("/ws", "Exact", "/ws/", False),
    ("/m", "ImplementationSpecific", "/metrics", True),
])
def test_path_matching_follows_the_ingress_spec(rule_path, path_type, request_path, expected):
    assert path_matches(rule_path, path_type, request_path) == expected


@pytest.mark.parametrize("path", PUBLIC)
def test_public_paths_are_routed(path):
    assert routed(path)


@pytest.mark.parametrize("path", [p + suffix for p in PRIVATE for suffix in ("", "/", "/x")])
def test_readyz_and_metrics_are_not_routed(path):
    assert not routed(path)


def test_every_rule_goes_to_the_signaling_service():
    for rule in ingress()["spec"]["rules"]:
        for p in rule["http"]["paths"]:
            assert p["backend"]["service"] == {"name": "signaling", "port": {"name": "http"}}


def test_the_access_log_cannot_record_a_query_string():
    annotations = ingress()["metadata"]["annotations"]
    # the controller-wide default format logs "$request": this Ingress logs nothing
    assert annotations["nginx.ingress.kubernetes.io/enable-access-log"] == "false"
    # a snippet could turn a log back on (and admins often refuse snippet annotations)
    assert not [k for k in annotations if k.endswith("-snippet")]


def test_the_example_controller_log_format_logs_paths_without_query_strings():
    (config,) = yaml.safe_load_all((BASE / "ingress-nginx-logformat.example.yaml").read_text())
    assert config["kind"] == "ConfigMap"
    log_format = config["data"]["log-format-upstream"]
    assert "$uri" in log_format
    assert not QUERY_VARIABLES.search(log_format), QUERY_VARIABLES.search(log_format)
    assert config["data"]["log-format-escape-json"] == "true"
    # the controller's ConfigMap, not a resource of this base
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert "ingress-nginx-logformat.example.yaml" not in kustomization["resources"]
