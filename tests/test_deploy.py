"""deploy/: what can be checked without a Docker engine or a cluster.

Every YAML and JSON file parses; the Kubernetes manifests validate against the Kubernetes schemas
(kubernetes-validate, strict: unknown fields fail); the files agree with each other and with the
gateway (its CLI flags, ports, paths, config keys, metric endpoint); the example configs pass
``opengateway check-config``; the Dockerfile passes hadolint and only copies paths that exist.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from gateway.app import create_app
from gateway.cli import build_parser, main
from gateway.config_load import parse_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
CONFIG_PATH = "/etc/opengateway/config.yaml"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the one manifest of that kind under deploy/k8s."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in found, f"two {doc['kind']} manifests"
            found[doc["kind"]] = doc
    return found


def required_env(config_text: str) -> set[str]:
    """The ${VAR} references without a default in the config's values: the environment must supply them."""
    def strings(node: Any) -> list[str]:
        if isinstance(node, dict):
            return [s for v in node.values() for s in strings(v)]
        if isinstance(node, list):
            return [s for v in node for s in strings(v)]
        return [node] if isinstance(node, str) else []
    return {m.group(1) for text in strings(yaml.safe_load(config_text))
            for m in ENV_REF.finditer(text) if m.group(2) is None}


def secret_example_env() -> dict[str, str]:
    return manifests()["Secret"]["stringData"]


def configmap_text() -> str:
    return manifests()["ConfigMap"]["data"]["config.yaml"]


def example_config() -> Any:
    return parse_config((DEPLOY / "config.example.yaml").read_text(), env=secret_example_env())


def gateway_container() -> dict[str, Any]:
    (container,) = manifests()["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


# --- everything parses ---------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.y*ml")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path: Path) -> None:
    assert all(doc is not None for doc in yaml.safe_load_all(path.read_text()))


@pytest.mark.parametrize("path", sorted(DEPLOY.rglob("*.json")), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_json_parses(path: Path) -> None:
    json.loads(path.read_text())


# --- Kubernetes ----------------------------------------------------------------------------------

def test_core_manifests_validate_against_the_kubernetes_schemas() -> None:
    version = kubernetes_validate.latest_version()
    for kind, doc in manifests().items():
        if kind in ("Kustomization", "PodMonitor"):  # not core API kinds: checked below
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind}: {exc.message} at {list(exc.path)}")


def test_kustomization_lists_every_manifest_but_the_examples_and_crds() -> None:
    listed = set(manifests()["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {
        "kustomization.yaml", "secret.example.yaml", "podmonitor.yaml"}


def test_configmap_config_is_the_example_config() -> None:
    assert parse_config(configmap_text(), env=secret_example_env()) == example_config()
    assert required_env(configmap_text()) <= set(secret_example_env())


def test_deployment_probes_ports_and_command_match_the_gateway() -> None:
    config, container = example_config(), gateway_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": config.server.port, "admin": config.server.admin_port}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    args = build_parser().parse_args(container["command"][1:] + container["args"])
    assert container["command"] == ["opengateway"]
    assert (args.command, args.config, args.host) == ("serve", CONFIG_PATH, "0.0.0.0")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == str(Path(CONFIG_PATH).parent)
    assert mounts["tmp"] == "/tmp"  # the read-only root fs still needs the metrics directory
    pod = manifests()["Deployment"]["spec"]["template"]
    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(config.server.admin_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_grace_period_covers_prestop_and_drain() -> None:
    container = gateway_container()
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace_s = manifests()["Deployment"]["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace_s > int(command[1]) + example_config().server.drain_timeout_s


def test_deployment_runs_as_non_root_with_resources() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    container = gateway_container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert set(container["resources"]) == {"requests", "limits"}
    assert {"cpu", "memory"} <= set(container["resources"]["requests"])
    assert "memory" in container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_names_and_selectors_line_up() -> None:
    kinds = manifests()
    deployment = kinds["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert kinds["Service"]["spec"]["selector"].items() <= labels.items()
    assert kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    assert kinds["PodMonitor"]["spec"]["selector"]["matchLabels"] == selector
    container_ports = {p["name"] for p in gateway_container()["ports"]}
    assert {p["targetPort"] for p in kinds["Service"]["spec"]["ports"]} == {"http"}  # never the admin port
    assert {e["port"] for e in kinds["PodMonitor"]["spec"]["podMetricsEndpoints"]} <= container_ports
    target = kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"]  # the HPA owns it
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    (env_from,) = gateway_container()["envFrom"]
    assert env_from["secretRef"]["name"] == kinds["Secret"]["metadata"]["name"]


# --- the example config --------------------------------------------------------------------------

def test_example_config_passes_check_config(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    for name, value in secret_example_env().items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", str(DEPLOY / "config.example.yaml")]) == 0
    assert "OK" in capsys.readouterr().out


# --- docker compose ------------------------------------------------------------------------------

def compose() -> Any:
    return load(DEPLOY / "docker-compose.yml")


def test_compose_services_ports_and_mounts() -> None:
    services = compose()["services"]
    assert set(services) == {"gateway", "redis", "prometheus", "grafana"}
    config = example_config()
    gateway = services["gateway"]
    assert gateway["ports"] == [f"{config.server.port}:{config.server.port}"]
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert f"./config.example.yaml:{CONFIG_PATH}:ro" in gateway["volumes"]
    assert gateway["environment"]["OPENGATEWAY_LIMITS_BACKEND"].startswith("redis://:${REDIS_PASSWORD:?")
    assert required_env((DEPLOY / "config.example.yaml").read_text()) <= set(gateway["environment"])
    stop_grace_s = int(gateway["stop_grace_period"].rstrip("s"))
    assert stop_grace_s > config.server.drain_timeout_s
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts {source}, which is not in the repo"


def test_compose_env_example_names_every_required_variable() -> None:
    names = {line.split("=")[0] for line in (DEPLOY / ".env.example").read_text().splitlines()
             if line and not line.startswith("#")}
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert set(re.findall(r"\$\{([A-Z_]+):\?", text)) <= names


def test_prometheus_scrapes_the_admin_port_and_loads_the_rules() -> None:
    prometheus = load(DEPLOY / "prometheus" / "prometheus.yml")
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == [f"gateway:{example_config().server.admin_port}"]
    for rules in prometheus["rule_files"]:
        assert (DEPLOY / "prometheus" / rules).exists()
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool comes from Debian's prometheus (.ci/run)")
def test_promtool_accepts_the_prometheus_config() -> None:
    result = subprocess.run(["promtool", "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Dockerfile ----------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_stages_user_and_copied_paths() -> None:
    steps = dockerfile()
    bases = [args.split()[0] for op, args in steps if op == "FROM"]
    assert len(bases) == 2 and bases[0] == bases[1], bases  # one base image, bumped in one go
    # An exact Python release on an exact Debian release: the build is reproducible.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)(@sha256:[0-9a-f]{64})?", bases[0]), bases[0]
    final = steps[[i for i, (op, _) in enumerate(steps) if op == "FROM"][1]:]
    assert not any(re.search(r"apt-get|gcc|build-essential", args) for op, args in final if op == "RUN")
    user = [args for op, args in final if op == "USER"]
    assert user and not user[-1].startswith(("root", "0"))
    for op, args in steps:
        if op == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            for source in sources:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
    assert ("COPY", f"deploy/config.example.yaml {CONFIG_PATH}") in steps


def test_dockerfile_cmd_healthcheck_and_ports_match_the_gateway() -> None:
    steps = dict(dockerfile())
    config = example_config()
    cmd = json.loads(steps["CMD"])
    args = build_parser().parse_args(cmd[1:])
    assert cmd[0] == "opengateway" and (args.command, args.config, args.host) == ("serve", CONFIG_PATH, "0.0.0.0")
    assert set(steps["EXPOSE"].split()) == {str(config.server.port), str(config.server.admin_port)}
    health = steps["HEALTHCHECK"]
    assert "curl" not in health and "urllib" in health
    assert f"http://127.0.0.1:{config.server.port}/healthz" in health


def test_dockerignore_keeps_what_the_dockerfile_copies() -> None:
    patterns = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    included = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    for op, args in dockerfile():
        if op == "COPY" and not args.startswith("--from"):
            *sources, _ = args.split()
            assert set(sources) <= included


def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(DEPLOY / "Dockerfile")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


async def test_healthcheck_command_probes_a_real_gateway(aiohttp_server: Any, make_config: Any) -> None:
    """The HEALTHCHECK's one-liner, pointed at the real app: healthy is 0, a closed port is not."""
    code = json.loads(dict(dockerfile())["HEALTHCHECK"].split("CMD", 1)[1])[2]
    server = await aiohttp_server(create_app(make_config()))
    port = example_config().server.port

    async def probe(url: str) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code.replace(f"http://127.0.0.1:{port}", url),
            stderr=asyncio.subprocess.DEVNULL)
        return await asyncio.wait_for(process.wait(), 60)
    url = str(server.make_url("")).rstrip("/")
    assert await probe(url) == 0
    await server.close()
    assert await probe(url) != 0


def test_grafana_provisioning_matches_the_compose_mounts() -> None:
    grafana = compose()["services"]["grafana"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"] if v.startswith(".")}
    provisioning = DEPLOY / mounted["/etc/grafana/provisioning"]
    (provider,) = load(provisioning / "dashboards" / "opengateway.yml")["providers"]
    dashboards_dir = provider["options"]["path"]
    assert mounted[f"{dashboards_dir}/opengateway.json"] == "./grafana/opengateway.json"
    (datasource,) = load(provisioning / "datasources" / "prometheus.yml")["datasources"]
    prometheus_port = compose()["services"]["prometheus"]["ports"][0].split(":")[1]
    assert datasource["url"] == f"http://prometheus:{prometheus_port}"


# --- read as a security reviewer would ----------------------------------------------------------

def _published(port: str) -> tuple[str | None, str]:
    """("127.0.0.1" or None for every interface, the host port) of a compose ``ports`` entry."""
    parts = str(port).split(":")
    return (parts[0] if len(parts) == 3 else None), parts[-2] if len(parts) >= 2 else parts[0]


def test_compose_publishes_only_the_api_on_every_interface() -> None:
    """Prometheus has no authentication and Grafana is an admin console: loopback only. Redis and
    the gateway's admin port are never published."""
    services, config = compose()["services"], example_config()
    for name, service in services.items():
        for port in service.get("ports", []):
            host_ip, host_port = _published(port)
            if name == "gateway":
                assert host_port == str(config.server.port), port  # the API, never the admin port
            else:
                assert host_ip == "127.0.0.1", f"{name} is published on every interface: {port}"
    assert "ports" not in services["redis"]
    assert str(config.server.admin_port) not in json.dumps(services["gateway"].get("ports", []))


def test_compose_has_no_default_or_environment_passwords() -> None:
    """Grafana's admin password and Redis's come from secret files made from deploy/.env, which
    names them without a usable value; nothing falls back to a default like ``admin``."""
    text = (DEPLOY / "docker-compose.yml").read_text()
    assert not re.search(r"\$\{[A-Z_]*(PASSWORD|SECRET|KEY)[A-Z_]*:-", text), "a secret with a default value"
    services, secrets = compose()["services"], compose()["secrets"]
    grafana = services["grafana"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in grafana["environment"]
    # The Grafana image reads GF_<NAME>__FILE into GF_<NAME> at start-up:
    # https://github.com/grafana/grafana/blob/main/packaging/docker/run.sh
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD__FILE"] == "/run/secrets/grafana_admin_password"
    assert grafana["environment"]["GF_USERS_ALLOW_SIGN_UP"] == "false"
    env_example = dict(line.split("=", 1) for line in (DEPLOY / ".env.example").read_text().splitlines()
                       if line and not line.startswith("#"))
    for name, service in services.items():
        for secret in service.get("secrets", []):
            # A Compose secret made from a variable of the project's environment, mounted at
            # /run/secrets/<name>: https://docs.docker.com/reference/compose-file/secrets/
            variable = secrets[secret]["environment"]
            assert variable in env_example, f"{name}'s secret {secret} comes from {variable}, not in .env.example"
    for name, value in env_example.items():
        if re.search(r"PASSWORD|SECRET|KEY", name):
            assert "REPLACE-ME" in value and value.lower() not in ("admin", "password", ""), name


def test_compose_containers_are_confined() -> None:
    services = compose()["services"]
    writable_root = {"grafana"}  # its image's write paths are not all known: see the compose file
    for name, service in services.items():
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
        assert bool(service.get("read_only")) is (name not in writable_root), name
        assert service["mem_limit"] and service["cpus"] and service["pids_limit"], name
    # The per-request bound: a 256 MiB upstream answer per request in flight, two workers.
    gateway = services["gateway"]
    assert gateway["mem_limit"] == "2g"
    assert example_config().server.max_upstream_body_bytes <= 256 << 20
    assert services["redis"]["user"] not in ("0", "root") and not services["redis"]["user"].startswith("0:")


def test_redis_requires_the_password_the_gateway_sends(tmp_path: Path) -> None:
    """The compose file's own Redis command and health check, run against the real redis-server
    (tests/redis_server.py): no password, no answer; the secret file's password, PONG."""
    from tests.redis_server import REDIS_SERVER, _free_port

    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed")
    redis = compose()["services"]["redis"]
    secret = tmp_path / "redis_password"
    secret.write_text("0123456789abcdef" * 4)
    port = _free_port()

    def as_run(command: str) -> str:  # what Compose hands the shell: $$ is a literal $
        return (command.replace("$$", "$").replace("/run/secrets/redis_password", str(secret))
                .replace("redis-server ", f"{REDIS_SERVER} --port {port} --bind 127.0.0.1 ", 1)
                .replace("redis-cli ", f"redis-cli -p {port} ", 1))
    assert redis["command"][:2] == ["sh", "-c"]
    server = subprocess.Popen(["sh", "-c", as_run(redis["command"][2])], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis as redis_py

        anonymous = redis_py.Redis(port=port, socket_timeout=2)
        for _ in range(100):  # bounded: ~5 s for the server to listen
            try:
                anonymous.ping()
                pytest.fail("Redis answered a client without the password")
            except redis_py.AuthenticationError:
                break
            except redis_py.ConnectionError:
                subprocess.run(["sleep", "0.05"], check=True)
        else:
            pytest.fail("redis-server did not start")
        authenticated = redis_py.Redis(port=port, password=secret.read_text(), socket_timeout=2)
        assert authenticated.ping() is True
        if shutil.which("redis-cli"):
            check = redis["healthcheck"]["test"]
            assert check[0] == "CMD-SHELL"
            assert subprocess.run(["sh", "-c", as_run(check[1])], timeout=10).returncode == 0
            secret.write_text("wrong")
            assert subprocess.run(["sh", "-c", as_run(check[1])], timeout=10).returncode != 0
        anonymous.close()
        authenticated.close()
    finally:
        server.terminate()
        server.wait(timeout=10)
    gateway_url = compose()["services"]["gateway"]["environment"]["OPENGATEWAY_LIMITS_BACKEND"]
    assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:\?[^}]*\}@redis:6379/0", gateway_url)
    k8s_url = secret_example_env()["OPENGATEWAY_LIMITS_BACKEND"]
    assert re.fullmatch(r"rediss?://:[^@/]+@[^/]+/\d+", k8s_url), k8s_url


def test_network_policy_confines_the_gateway_pods() -> None:
    """The admin port only from the monitoring namespace's Prometheus; egress only DNS, Redis
    and HTTPS, never the metadata address."""
    kinds = manifests()
    policy = kinds["NetworkPolicy"]["spec"]
    pod_labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items() and policy["podSelector"]["matchLabels"]
    assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
    container_ports = {p["name"]: p["containerPort"] for p in gateway_container()["ports"]}
    by_port: dict[object, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        assert rule.get("ports"), "an ingress rule without ports opens every port"
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).append(rule)
    assert set(by_port) == {"http", "admin"} <= set(container_ports)
    (admin,) = by_port["admin"]
    (source,) = admin["from"]
    assert source["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": "monitoring"}
    assert source["podSelector"]["matchLabels"]
    allowed: set[tuple[int, str]] = set()
    for rule in policy["egress"]:
        assert rule.get("ports") and rule.get("to"), "an egress rule without ports or peers opens too much"
        allowed |= {(p["port"], p["protocol"]) for p in rule["ports"]}
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert "169.254.169.254/32" in peer["ipBlock"].get("except", [])
    assert allowed == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (443, "TCP")}
    assert "networkpolicy.yaml" in kinds["Kustomization"]["resources"]


def test_pods_run_confined_with_memory_for_the_per_request_bound() -> None:
    pod = manifests()["Deployment"]["spec"]["template"]["spec"]
    container = gateway_container()
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    security = container["securityContext"]
    assert security["capabilities"]["drop"] == ["ALL"] and "add" not in security["capabilities"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert container["resources"]["limits"]["memory"] == "2Gi"


def test_the_image_pins_every_python_package() -> None:
    """PIP_CONSTRAINT holds the build to deploy/constraints.txt, which pins every runtime
    dependency of ``.[redis,otel]`` (transitive ones included) at a version setup.cfg accepts."""
    from importlib.metadata import distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    builder = dockerfile()[: [i for i, (op, _) in enumerate(dockerfile()) if op == "FROM"][1]]
    env = " ".join(args for op, args in builder if op == "ENV")
    assert "PIP_CONSTRAINT=/src/deploy/constraints.txt" in env
    assert ("COPY", "deploy/constraints.txt ./deploy/constraints.txt") in builder
    pins: dict[str, Version] = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned exactly: {line}"
            pins[canonicalize_name(name)] = Version(version)

    def closure(requirement: Requirement, extras: set[str], seen: set[str]) -> None:
        name = canonicalize_name(requirement.name)
        if name in seen:
            return
        seen.add(name)
        if name != "opengateway":
            assert name in pins, f"{name} is a runtime dependency but not in deploy/constraints.txt"
            assert requirement.specifier.contains(pins[name], prereleases=True), (name, requirement.specifier)
        for text in distribution(requirement.name).requires or []:
            dep = Requirement(text)
            if dep.marker is None or any(dep.marker.evaluate({"extra": e}) for e in extras | {""}):
                closure(dep, set(dep.extras), seen)
    seen: set[str] = set()
    closure(Requirement("opengateway[redis,otel]"), {"redis", "otel"}, seen)
    assert {"aiohttp", "msgspec", "redis", "uvloop", "multidict", "yarl", "opentelemetry-sdk"} <= seen
    build = load_toml_build_requires()
    assert {canonicalize_name(Requirement(r).name) for r in build} <= set(pins)


def load_toml_build_requires() -> list[str]:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]


def test_every_keys_create_example_is_a_valid_command() -> None:
    """``opengateway keys create NAME`` fails (--name is required): every example must parse."""
    found = 0
    for path in [*DEPLOY.rglob("*"), ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        if not path.is_file() or path.suffix in (".json",):
            continue
        for match in re.finditer(r"opengateway (keys create [^`\n]+)`", path.read_text()):
            found += 1
            args = build_parser().parse_args(match.group(1).replace("'", "").split())
            assert args.name, (path, match.group(0))
    assert found >= 3
