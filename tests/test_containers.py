"""The container files, checked without a Docker daemon.

``Dockerfile``, ``.dockerignore`` and ``compose.yaml`` are parsed here (simple line
parsing; PyYAML, which MLflow brings) and checked against the code they deploy: the
settings' environment names, the ports, the Python version of ``pyproject.toml``, the
files the image copies, and the way training stores artifacts. Each checker returns the
problems it finds, so the tests below can also show that a broken file is caught.
``docker build`` and ``docker compose config`` / ``up`` remain the full checks where a
daemon exists. The two scripts the image runs (``deploy/``) are tested as code.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import re
import shlex
import socket
import tomllib
from concurrent import futures
from pathlib import Path
from types import ModuleType

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from service.config import ENV_NAMES, Settings, load_settings, local_store_dirs

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE = yaml.safe_load(COMPOSE_TEXT)
README = (ROOT / "README.md").read_text()
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())

STORES = {"redis", "mlflow"}
FOUR = {"redis", "mlflow", "train", "service"}
#: What deployments set already (DESIGN.md); the service must be given each by name.
SERVICE_CONTRACT = {
    "REDIS_URL",
    "MLFLOW_TRACKING_URI",
    "OMNIREC_IDENTITY_SECRET",
    "OMNIREC_API_KEYS_FILE",
    "OMNIREC_HOST",
    "OMNIREC_METRICS_PORT",
}
SECRET = "s" * 32  # stands in for ${OMNIREC_IDENTITY_SECRET} when settings are loaded


# --- Dockerfile -------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` in order: continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, args = (pending + stripped).partition(" ")
        out.append((keyword.upper(), args.strip()))
        pending = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (each starts with its FROM)."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


def exec_form(args: str) -> list[str]:
    """``["a", "b"]`` (JSON exec form) as a list; shell form is refused."""
    value = json.loads(args)
    if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        raise ValueError(f"not exec form: {args}")
    return value


def copy_sources(text: str) -> list[str]:
    """Sources of every COPY from the build context (not ``--from`` another stage)."""
    sources = []
    for keyword, args in instructions(text):
        if keyword != "COPY":
            continue
        words = shlex.split(args)
        if any(w.startswith("--from=") for w in words):
            continue
        paths = [w for w in words if not w.startswith("--")]
        sources += paths[:-1]
    return sources


def python_problems(text: str, requires_python: str) -> list[str]:
    """Every stage is ``python:X.Y-slim`` of one X.Y, the lowest requires-python allows."""
    images = [args.split()[0] for keyword, args in instructions(text) if keyword == "FROM"]
    versions = set()
    problems = []
    for image in images:
        match = re.fullmatch(r"python:(\d+\.\d+)-slim", image)
        if not match:
            problems.append(f"FROM {image}: not python:X.Y-slim")
        else:
            versions.add(match.group(1))
    if len(versions) > 1:
        problems.append(f"stages use different Pythons: {sorted(versions)}")
    floor = re.search(r">=\s*(\d+\.\d+)", requires_python)
    for version in versions:
        if Version(version) not in SpecifierSet(requires_python):
            problems.append(f"python {version} is outside requires-python {requires_python}")
        elif floor and version != floor.group(1):
            problems.append(f"python {version}: requires-python's floor is {floor.group(1)}")
    return problems


def runtime_problems(text: str) -> list[str]:
    """The last stage: a non-root USER before CMD, CMD serves, no build tools or dev extras."""
    problems = []
    found = stages(text)
    if len(found) < 2:
        problems.append("not multi-stage: build tools would stay in the image")
    final = found[-1] if found else []
    keywords = [keyword for keyword, _ in final]
    users = [args for keyword, args in final if keyword == "USER"]
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append(f"final stage runs as root (USER {users[-1] if users else 'unset'})")
    if "CMD" not in keywords:
        problems.append("no CMD")
    else:
        cmd = [args for keyword, args in final if keyword == "CMD"][-1]
        if exec_form(cmd) != ["python", "-m", "service", "serve"]:
            problems.append(f"CMD {cmd} does not run the service")
        if "USER" not in keywords or keywords.index("USER") > keywords.index("CMD"):
            problems.append("USER comes after CMD")
    if "ENTRYPOINT" in keywords:
        problems.append("an ENTRYPOINT would wrap `python -m training …` commands")
    final_runs = " ".join(args for keyword, args in final if keyword == "RUN")
    if re.search(r"\bpip\b.*\binstall\b", final_runs):
        problems.append("the final stage installs Python packages (do it in the build stage)")
    if "libgomp1" not in final_runs:
        problems.append("libgomp1 (implicit's OpenMP runtime) is not installed")
    if not any(keyword == "COPY" and "--from=" in args for keyword, args in final):
        problems.append("the final stage copies nothing from the build stage")
    every_run = " ".join(args for keyword, args in instructions(text) if keyword == "RUN")
    if re.search(r"\[[^\]]*\bdev\b[^\]]*\]", every_run):
        problems.append("dev extras installed")
    if re.search(r"pip install[^&]*\s(-e|--editable)\s", every_run):
        problems.append("editable install: the image would need the source tree")
    return problems


def exposed(text: str) -> set[int]:
    return {
        int(port.split("/")[0])
        for keyword, args in instructions(text)
        if keyword == "EXPOSE"
        for port in args.split()
    }


def ignored(path: str, patterns: list[str]) -> bool:
    """Whether ``.dockerignore`` ``patterns`` keep ``path`` out of the build context: the
    last matching pattern wins, ``!`` lets back in, a pattern matching a parent folder
    matches what is inside, ``**/`` matches at any depth (the subset this repo uses)."""
    parts = path.strip("/").split("/")
    verdict = False
    for raw in patterns:
        pattern = raw.removeprefix("!").strip("/")
        anywhere = pattern.startswith("**/")
        pattern = pattern.removeprefix("**/")
        starts = range(len(parts)) if anywhere else [0]
        if any(
            fnmatch.fnmatchcase("/".join(parts[start:end]), pattern)
            for start in starts
            for end in range(start + 1, len(parts) + 1)
        ):
            verdict = not raw.startswith("!")
    return verdict


def dockerignore_patterns(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def copy_problems(text: str, ignore_text: str, root: Path) -> list[str]:
    """Every COPY source exists in the repo and the build context lets it in."""
    patterns = dockerignore_patterns(ignore_text)
    problems = []
    for source in copy_sources(text):
        if not (root / source).exists():
            problems.append(f"COPY {source}: no such file in the repo")
        elif ignored(source, patterns):
            problems.append(f"COPY {source}: excluded by .dockerignore")
    return problems


def test_python_version_matches_requires_python():
    requires = PYPROJECT["project"]["requires-python"]
    assert python_problems(DOCKERFILE, requires) == []
    target = PYPROJECT["tool"]["ruff"]["target-version"]  # py311
    (image,) = {args.split()[0] for keyword, args in instructions(DOCKERFILE) if keyword == "FROM"}
    assert target == "py" + image.split(":")[1].removesuffix("-slim").replace(".", "")


def test_runtime_stage_is_non_root_and_serves_by_default():
    assert runtime_problems(DOCKERFILE) == []


def test_every_copied_file_exists_and_reaches_the_build():
    assert copy_sources(DOCKERFILE)  # the parser found them
    assert copy_problems(DOCKERFILE, DOCKERIGNORE, ROOT) == []


def test_package_is_installed_from_pyproject_with_what_its_build_reads():
    runs = " ".join(args for keyword, args in instructions(DOCKERFILE) if keyword == "RUN")
    assert "pip install --no-deps ." in runs
    assert "['project']['dependencies']" in runs  # runtime dependencies, not extras
    copied = set(copy_sources(DOCKERFILE))
    # setuptools reads these while building: the readme and the licence file
    assert {"pyproject.toml", PYPROJECT["project"]["readme"]} <= copied
    assert set(PYPROJECT["project"]["license-files"]) <= copied
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert package.removesuffix("*") in copied


def test_build_context_leaves_local_state_out():
    patterns = dockerignore_patterns(DOCKERIGNORE)
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        ".omnirec/mlflow.db",
        "mlruns/0/meta.yaml",
        "mlartifacts/1/x",
        ".pytest_cache/v",
        ".ruff_cache/x",
        ".hypothesis/examples/x",
        "service/__pycache__/config.cpython-311.pyc",
        "bench/results.json",
        "deploy/data/events.parquet",
        "tests/test_config.py",
        ".env",
    ):
        assert ignored(path, patterns), path
    for path in ("service/config.py", "service/store/keys.py", "omnirec/v1/recommender_pb2.py"):
        assert not ignored(path, patterns), path


def test_exposed_ports_are_the_settings_and_compose_ports():
    service = COMPOSE["services"]["service"]
    env = service["environment"]
    assert exposed(DOCKERFILE) == {Settings.port, int(env["OMNIREC_METRICS_PORT"])}
    assert {container_port(p) for p in service["ports"]} == exposed(DOCKERFILE)


def test_scripts_the_image_runs_are_copied_onto_the_path():
    copied = {
        Path(shlex.split(args)[-1]).name
        for keyword, args in instructions(DOCKERFILE)
        if keyword == "COPY" and "deploy/" in args
    }
    health_cmd = [args for keyword, args in instructions(DOCKERFILE) if keyword == "HEALTHCHECK"]
    assert len(health_cmd) == 1
    assert exec_form(health_cmd[0].split(" CMD ", 1)[1])[0] in copied
    assert COMPOSE["services"]["train"]["entrypoint"][0] in copied


@pytest.mark.parametrize(
    "old, new, problem",
    [
        ("USER omnirec", "USER root", "root"),
        ("USER omnirec\n", "", "root"),
        ('CMD ["python", "-m", "service", "serve"]', 'CMD ["python", "-m", "training"]', "CMD"),
        ("pip install --no-deps .", "pip install --no-deps '.[dev]'", "dev extras"),
        ("--no-install-recommends libgomp1", "--no-install-recommends curl", "libgomp1"),
        ("FROM python:3.11-slim AS build", "FROM python:3.12-slim AS build", "different"),
    ],
)
def test_a_broken_dockerfile_is_caught(old, new, problem):
    assert old in DOCKERFILE
    broken = DOCKERFILE.replace(old, new)
    found = runtime_problems(broken) + python_problems(
        broken, PYPROJECT["project"]["requires-python"]
    )
    assert any(problem in p for p in found), found


def test_a_missing_or_ignored_copy_source_is_caught():
    assert copy_problems(DOCKERFILE.replace("deploy/healthcheck.py", "deploy/gone.py"), "", ROOT)
    assert copy_problems(DOCKERFILE, DOCKERIGNORE.replace("!service\n", ""), ROOT)


def test_python_outside_requires_python_is_caught():
    assert python_problems(DOCKERFILE, ">=3.12")
    assert python_problems(DOCKERFILE.replace("python:3.11-slim", "python:3.11"), ">=3.11")


# --- compose.yaml -----------------------------------------------------------------------

VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``, for tests."""

    def one(match: re.Match[str]) -> str:
        name, rest = match.group(1), match.group(0)[len(match.group(1)) + 2 : -1]
        if env.get(name):
            return env[name]
        if rest.startswith((":-", "-")):
            return rest.split("-", 1)[1]
        if rest.startswith((":?", "?")):
            raise KeyError(f"{name} is required")
        return ""

    return VARIABLE.sub(one, value)


def environment(service: str, doc: dict | None = None) -> dict[str, str]:
    env = (doc or COMPOSE)["services"][service].get("environment", {})
    assert isinstance(env, dict), f"{service}: environment as a mapping"
    return {k: interpolate(str(v), {"OMNIREC_IDENTITY_SECRET": SECRET}) for k, v in env.items()}


def container_port(spec: str) -> int:
    return int(str(spec).split(":")[-1].split("/")[0])


def ours(name: str, doc: dict | None = None) -> bool:
    """Whether the service runs the omnirec image (built from this repo)."""
    return "build" in (doc or COMPOSE)["services"][name]


def compose_problems(doc: dict) -> list[str]:
    """Structure: the services, their settings, ports, volumes and start order."""
    problems = []
    services = doc["services"]
    if not set(services) >= FOUR:
        problems.append(f"services {sorted(FOUR - set(services))} missing")
    for name, spec in services.items():
        if name not in FOUR and not spec.get("profiles"):
            problems.append(f"{name}: an extra service that `up` would start")
    redis = services.get("redis", {})
    command = " ".join(map(str, redis.get("command", [])))
    if not redis.get("image", "").startswith("redis:"):
        problems.append("redis: not the official image")
    if "--appendonly yes" not in command:
        problems.append("redis: append-only file off")
    if not any(str(v).split(":")[1:2] == ["/data"] for v in redis.get("volumes", [])):
        problems.append("redis: /data is not on a volume")
    for name in ("train", "service"):
        env = environment(name, doc)
        unknown = set(env) - set(ENV_NAMES.values())
        if unknown:
            problems.append(f"{name}: {sorted(unknown)} are not settings (service/config.py)")
        try:
            load_settings(env)
        except Exception as exc:  # ConfigError: the setting is invalid
            problems.append(f"{name}: {exc}")
    missing = SERVICE_CONTRACT - set(environment("service", doc))
    if missing:
        problems.append(f"service: contract variables {sorted(missing)} not set")
    # depends_on: stores healthy before training, training done before serving
    wanted = {
        "train": {"redis": "service_healthy", "mlflow": "service_healthy"},
        "service": {
            "redis": "service_healthy",
            "mlflow": "service_healthy",
            "train": "service_completed_successfully",
        },
    }
    for name, needs in wanted.items():
        got = {k: v.get("condition") for k, v in services[name].get("depends_on", {}).items()}
        if got != needs:
            problems.append(f"{name}: depends_on {got}, wanted {needs}")
    for name in ("redis", "mlflow", "service"):
        check = services[name].get("healthcheck", {})
        if not check.get("test") and not ours(name, doc):  # ours: the image's HEALTHCHECK
            problems.append(f"{name}: no healthcheck, yet others wait for it to be healthy")
    if not services["train"].get("healthcheck", {}).get("disable"):
        problems.append("train: the image's gRPC health check would mark the job unhealthy")
    # volumes: named ones declared, and nothing published beyond this machine
    declared = set(doc.get("volumes") or {})
    for name, spec in services.items():
        for volume in spec.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith(("/", ".", "$")) and source not in declared:
                problems.append(f"{name}: volume {source} is not declared")
        for port in spec.get("ports", []):
            if not str(port).startswith("127.0.0.1:"):
                problems.append(f"{name}: port {port} published beyond 127.0.0.1")
    if services["redis"].get("ports"):
        problems.append("redis: published (it has no password)")
    return problems


def test_compose_structure():
    assert compose_problems(COMPOSE) == []


def test_service_refuses_nothing_it_should_refuse():
    """A non-loopback address needs a keys file (README "Security"); the safe way is the
    keys file, never OMNIREC_ALLOW_ANONYMOUS."""
    settings = load_settings(environment("service"))
    assert settings.host == "0.0.0.0"
    assert settings.api_keys_file and not settings.allow_anonymous
    assert settings.metrics_port != 0 and settings.port == Settings.port


def test_keys_file_is_where_make_key_writes_it():
    services = COMPOSE["services"]
    keys_file = Path(environment("service")["OMNIREC_API_KEYS_FILE"])
    tool = services["make-key"]
    assert tool["entrypoint"][-2:] == ["--file", str(keys_file)]
    assert tool["entrypoint"][:4] == ["python", "-m", "service", "make-key"]

    def volume_at(spec: dict, folder: Path) -> str:
        (found,) = [v for v in spec["volumes"] if str(v).split(":")[1] == str(folder)]
        return found

    served = volume_at(services["service"], keys_file.parent)
    written = volume_at(tool, keys_file.parent)
    assert served.split(":")[0] == written.split(":")[0]  # the same named volume
    assert served.endswith(":ro") and not written.endswith(":ro")


def test_our_image_is_built_once_and_its_mounts_exist_in_it():
    names = [name for name in COMPOSE["services"] if ours(name)]
    assert set(names) == {"mlflow", "train", "service", "make-key"}
    assert len({json.dumps(COMPOSE["services"][n]["build"], sort_keys=True) for n in names}) == 1
    assert len({COMPOSE["services"][n]["image"] for n in names}) == 1
    for name in names:
        for volume in COMPOSE["services"][name].get("volumes", []):
            target = str(volume).split(":")[1]
            # created (owned by the image's user) by the Dockerfile, or a read-only input
            assert target in DOCKERFILE or str(volume).endswith(":ro"), (name, target)


def test_every_compose_variable_is_documented():
    used = set(VARIABLE.findall(COMPOSE_TEXT))
    assert "OMNIREC_IDENTITY_SECRET" in used
    for name in used:
        assert f"`{name}`" in README, f"{name} is used in compose.yaml but not in README.md"


def test_the_secret_is_required_not_defaulted():
    with pytest.raises(KeyError, match="OMNIREC_IDENTITY_SECRET"):
        interpolate(COMPOSE["x-omnirec-env"]["OMNIREC_IDENTITY_SECRET"], {})


def test_mlflow_serves_the_artifacts_training_logs():
    """Training and serving reach bundles through the tracking server: the experiment's
    artifact root is an mlflow-artifacts URI (not a path inside the trainer's container),
    and the server proxies it to its volume."""
    train = load_settings(environment("train"))
    service = load_settings(environment("service"))
    assert train.mlflow_tracking_uri == service.mlflow_tracking_uri
    assert local_store_dirs(train) == [] and local_store_dirs(service) == []
    assert train.artifact_root.startswith("mlflow-artifacts:")

    mlflow = COMPOSE["services"]["mlflow"]
    command = [str(word) for word in mlflow["command"]]
    flags = dict(zip(command, command[1:], strict=False))
    host, port = train.mlflow_tracking_uri.removeprefix("http://").split(":")
    assert host == "mlflow" and flags["--port"] == port and flags["--host"] == "0.0.0.0"
    assert "--serve-artifacts" in command
    assert f"{host}:{port}" in flags["--allowed-hosts"].split(",")
    (volume,) = mlflow["volumes"]
    kept = volume.split(":")[1]
    assert flags["--artifacts-destination"].startswith(kept + "/")
    assert flags["--backend-store-uri"] == f"sqlite:///{kept}/mlflow.db"

    from mlflow.store.artifact.mlflow_artifacts_repo import MlflowArtifactsRepository

    url = MlflowArtifactsRepository.resolve_uri(
        f"{train.artifact_root}/run/artifacts/bundle", train.mlflow_tracking_uri
    )
    assert (
        url
        == f"http://{host}:{port}/api/2.0/mlflow-artifacts/artifacts/omnirec/run/artifacts/bundle"
    )


def test_training_creates_the_experiment_behind_the_server(monkeypatch):
    """The experiment training creates keeps OMNIREC_ARTIFACT_ROOT as it is (a bare
    ``mlflow-artifacts:/x`` would be taken for a local folder)."""
    import mlflow

    from training import mlflow_view

    created = {}
    monkeypatch.setattr(mlflow, "get_experiment_by_name", lambda name: None)
    monkeypatch.setattr(
        mlflow,
        "create_experiment",
        lambda name, artifact_location, tags: created.setdefault("at", artifact_location),
    )
    root = load_settings(environment("train")).artifact_root
    mlflow_view.experiment("omnirec", root)
    assert created["at"] == root


@pytest.mark.parametrize(
    "change, problem",
    [
        (lambda d: d["services"]["redis"].update(command=["redis-server"]), "append-only"),
        (lambda d: d["services"]["service"]["environment"].update(OMNIREC_PROT="1"), "settings"),
        (lambda d: d["services"]["service"]["environment"].pop("OMNIREC_API_KEYS_FILE"), "API"),
        (lambda d: d["services"]["service"]["environment"].update(REDIS_URL="http://x"), "REDIS"),
        (lambda d: d["services"]["service"]["depends_on"].pop("train"), "depends_on"),
        (lambda d: d["services"]["service"].update(ports=["50051:50051"]), "beyond"),
        (lambda d: d["services"].pop("mlflow"), "missing"),
        (lambda d: d["services"]["make-key"].pop("profiles"), "extra"),
        (lambda d: d["volumes"].pop("redis"), "not declared"),
    ],
)
def test_a_broken_compose_file_is_caught(change, problem):
    doc = yaml.safe_load(COMPOSE_TEXT)
    try:
        change(doc)
        found = compose_problems(doc)
    except KeyError as exc:  # a checker that needs the removed part says so by failing
        found = [f"missing {exc}"]
    assert any(problem in p for p in found), found


# --- deploy/: the scripts the image runs ------------------------------------------------


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_job_generates_demo_data_once(tmp_path):
    job = load_script("train_job")
    demo = tmp_path / "demo"
    steps = job.commands(tmp_path / "absent", demo, ["--model", "als"], python="py")
    assert steps == [
        ["py", "-m", "training", "generate", "--out", str(demo)],
        [
            "py",
            "-m",
            "training",
            "train",
            "--events",
            str(demo / "events.parquet"),
            "--items",
            str(demo / "items.parquet"),
            "--model",
            "als",
        ],
    ]
    demo.mkdir()
    (demo / "events.parquet").touch()
    (demo / "items.parquet").touch()
    assert job.commands(tmp_path / "absent", demo, [], python="py") == [steps[1][:-2]]


def test_train_job_trains_on_the_mounted_files(tmp_path):
    job = load_script("train_job")
    for name in ("b.csv", "a.parquet", "c.csv.gz", "items.csv", "README.md", ".gitignore"):
        (tmp_path / name).touch()
    (tmp_path / "exports").mkdir()
    steps = job.commands(tmp_path, tmp_path / "demo", [], python="py")
    assert steps == [
        [
            "py",
            "-m",
            "training",
            "train",
            "--events",
            *(str(tmp_path / n) for n in ("a.parquet", "b.csv", "c.csv.gz", "exports")),
            "--items",
            str(tmp_path / "items.csv"),
        ]
    ]


def test_train_job_commands_parse_with_the_real_cli(tmp_path):
    job = load_script("train_job")
    from training.__main__ import build_parser

    (tmp_path / "items.parquet").touch()
    (tmp_path / "events.csv").touch()
    generate = job.commands(Path("/nonexistent"), tmp_path / "demo", [], python="py")[0]
    (train,) = job.commands(tmp_path, tmp_path / "demo", ["--model", "ease"], python="py")
    assert str(build_parser().parse_args(generate[3:]).out) == str(tmp_path / "demo")
    args = build_parser().parse_args(train[3:])
    assert [str(e) for e in args.events] == [str(tmp_path / "events.csv")]
    assert str(args.items) == str(tmp_path / "items.parquet") and args.model == "ease"


@pytest.fixture
def health_server():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(None)


def test_healthcheck_follows_the_servers_health(health_server, monkeypatch, capsys):
    check = load_script("healthcheck")
    servicer, port = health_server
    monkeypatch.setenv("OMNIREC_PORT", str(port))
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert check.main() == 1
    assert "NOT_SERVING" in capsys.readouterr().err
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert check.main() == 0


def test_healthcheck_fails_when_nothing_listens(monkeypatch, capsys):
    check = load_script("healthcheck")
    with socket.socket() as probe:  # a port the system just handed out, then closed
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    monkeypatch.setenv("OMNIREC_PORT", str(free))
    assert check.main() == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_pyproject_licence_is_an_spdx_string_with_its_file():
    project = PYPROJECT["project"]
    assert project["license"] == "Apache-2.0"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    (setuptools,) = [
        Requirement(r) for r in PYPROJECT["build-system"]["requires"] if r.startswith("setuptools")
    ]
    # setuptools reads PEP 639 licence strings (and license-files) from 77 on
    assert Version("77") in setuptools.specifier
    assert Version("76.1") not in setuptools.specifier
