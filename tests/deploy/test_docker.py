"""The Docker set-up, checked without a Docker engine.

An image is built and run only by `make compose-check` (bench/compose_check.py, on a host
with a Docker daemon); these tests need none. What is checked here: the
Dockerfile lints clean (hadolint) and installs and starts this package the way the tests
run it (its entrypoint and start command are run here, outside a container, with the
image's settings); the compose files pass the Compose Specification's schema and, where the
real Compose binary is installed, `docker compose config`; .env.example and the README
list every setting.
"""

from __future__ import annotations

import asyncio
import copy
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from bench.compose_check import CannotRun, compose_binary, log_findings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
COMPOSE_GPU = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
SCHEMA = json.loads((Path(__file__).parent / "schemas" / "compose-spec.json").read_text())


# --- reading the Dockerfile -----------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: continuation lines joined, comment lines dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in (REPO / "Dockerfile").read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, rest = full.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instructions(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def exec_form(name: str) -> list[str]:
    """The JSON (exec) form of the last CMD / ENTRYPOINT, as Docker runs it."""
    found = instructions(name)
    assert found, f"the Dockerfile has no {name}"
    return json.loads(found[-1])


def image_env() -> dict[str, str]:
    """What the image's ENV instructions set (KEY=value form)."""
    env: dict[str, str] = {}
    for rest in instructions("ENV"):
        env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def healthcheck() -> list[str]:
    (rest,) = instructions("HEALTHCHECK")
    _, _, command = rest.partition(" CMD ")
    return json.loads(command)


def base_image_default() -> str:
    for rest in instructions("ARG"):
        name, _, value = rest.partition("=")
        if name == "BASE_IMAGE":
            return value
    raise AssertionError("the Dockerfile has no ARG BASE_IMAGE=<image>")


def pip_installs() -> list[list[str]]:
    """The argument lists of every `pip install` the image runs, in order."""
    found = []
    for rest in instructions("RUN"):
        for step in rest.split("&&"):
            words = shlex.split(step)
            if "pip" in words and words[words.index("pip") + 1 : words.index("pip") + 2] == [
                    "install"]:
                found.append(words[words.index("pip") + 2 :])
    return found


# --- reading the compose files ------------------------------------------------------------

class ComposeLoader(yaml.SafeLoader):
    """YAML loader that accepts Compose's `!reset` and `!override` tags."""


def _untagged(loader: ComposeLoader, node: yaml.Node) -> Any:
    """The tagged value itself: a file read alone is what it says before any merging."""
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _untagged)
ComposeLoader.add_constructor("!override", _untagged)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def schema_errors(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.validators.validator_for(SCHEMA)(SCHEMA)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in validator.iter_errors(doc)]


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    reservations = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return reservations.get("devices") or []


# --- the Dockerfile -------------------------------------------------------------------------

def test_dockerfile_lints_clean() -> None:
    hadolint = shutil.which("hadolint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert hadolint, "hadolint not found: install the dev extra (pip install -e '.[dev]')"
    run = subprocess.run([hadolint, "--no-color", "Dockerfile"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert (run.returncode, run.stdout + run.stderr) == (0, "")


def test_base_image_is_the_tensorflow_release_the_package_allows() -> None:
    match = re.fullmatch(r"tensorflow/tensorflow:(\d+\.\d+\.\d+)-gpu", base_image_default())
    assert match, f"base image {base_image_default()!r} is not an official TF GPU release tag"
    version = match.group(1)
    extras = PYPROJECT["project"]["optional-dependencies"]
    for extra in ("cpu", "gpu"):
        (requirement,) = [r for r in extras[extra] if r.startswith("tensorflow")]
        allowed = SpecifierSet(re.sub(r"^[\w\-\[\]]+", "", requirement))
        assert Version(version) in allowed, f"the {extra} extra ({requirement}) excludes {version}"
    cpu_args = [load_compose(COMPOSE_CPU)["services"][s]["build"]["args"] for s in ("api", "train")]
    assert all(a["BASE_IMAGE"] == f"tensorflow/tensorflow:{version}" for a in cpu_args)
    tested = next((metadata.version(d) for d in ("tensorflow-cpu", "tensorflow")
                   if _installed(d)), None)
    if tested != version:
        warnings.warn(f"tests ran on TensorFlow {tested}, the image has {version}", stacklevel=1)


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def test_image_installs_this_package_from_pyproject_without_extras() -> None:
    installs = pip_installs()
    assert len(installs) == 2, installs
    deps, package = installs
    # Dependencies: a requirements file that the Dockerfile's own snippet writes from
    # pyproject.toml; run that snippet here to see it yields exactly the core dependencies.
    (snippet_step,) = [s for r in instructions("RUN") for s in r.split("&&") if "tomllib" in s]
    words = shlex.split(snippet_step)
    code = words[words.index("-c") + 1]
    requirements = words[words.index(">") + 1]
    assert deps == ["-r", requirements]
    printed = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                             text=True, check=True, timeout=60).stdout.split("\n")
    assert printed[:-1] == PYPROJECT["project"]["dependencies"]
    # The package: `pip install .`, the repository itself, with no extra (TF is in the image).
    assert package == ["--no-deps", "."]


def test_image_bakes_in_no_ca_and_takes_one_as_a_build_secret() -> None:
    """Behind a TLS-intercepting proxy pip needs the proxy's CA: every pip step can take it
    from the `pip_ca` secret (mounted for that step only); no CA is copied into a layer."""
    for word in ("COPY", "ADD"):
        for rest in instructions(word):
            assert not re.search(r"\.(crt|pem)\b|ca-certificates|/ssl/", rest), rest
    assert "PIP_CERT" not in image_env() and "REQUESTS_CA_BUNDLE" not in image_env()
    pip_runs = [rest for rest in instructions("RUN") if "pip install" in rest]
    assert len(pip_runs) == len(pip_installs()) == 2
    for rest in pip_runs:
        assert rest.startswith("--mount=type=secret,id=pip_ca "), rest
        assert "if [ -s /run/secrets/pip_ca ]; then export PIP_CERT=/run/secrets/pip_ca; fi" \
            in rest


def test_image_copies_everything_the_package_build_needs() -> None:
    copied = {shlex.split(rest)[0] for rest in instructions("COPY")}
    found = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {p.rstrip("*") for p in found}
    needed = {"pyproject.toml", PYPROJECT["project"]["readme"], *packages}
    assert needed <= copied, f"the image does not copy {sorted(needed - copied)}"
    ignored = [p.strip() for p in (REPO / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    for source in copied:
        assert (REPO / source).exists(), source
        assert not any(fnmatch.fnmatch(source, p) or fnmatch.fnmatch(source.split("/")[0], p)
                       for p in ignored), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "data", "bundles", "results", ".pytest_cache", "__pycache__"):
        assert any(fnmatch.fnmatch(heavy, p.removeprefix("**/")) for p in ignored), heavy


def test_start_command_is_the_package_console_script() -> None:
    from app.cli import build_parser

    assert exec_form("CMD") == ["fmrec", "serve"]
    assert PYPROJECT["project"]["scripts"]["fmrec"] == "app.cli:main"
    (commands,) = [a.choices for a in build_parser()._subparsers._group_actions]  # type: ignore[union-attr]
    assert "serve" in commands, f"`fmrec serve` does not exist (commands: {sorted(commands)})"
    (entrypoint,) = exec_form("ENTRYPOINT")
    copies = {shlex.split(r)[1]: shlex.split(r)[0] for r in instructions("COPY")}
    assert copies[f"/usr/local/bin/{entrypoint}"] == "docker/entrypoint.sh"
    assert os.access(REPO / "docker" / "entrypoint.sh", os.X_OK)
    assert os.access(REPO / "docker" / "bootstrap.sh", os.X_OK)


def test_healthcheck_asks_a_route_of_the_app() -> None:
    command = healthcheck()
    paths = re.findall(r"http://127\.0\.0\.1:\{[^}]+\}(/\w+)", command[-1])
    assert paths == ["/healthz"], command
    assert image_env()["FMREC_PORT"] == "8000"
    assert instructions("EXPOSE") == ["8000"]
    main = pytest.importorskip("app.main", reason="app.main (the service) is not there yet")

    async def get() -> int:
        # ASGITransport does not run the lifespan (no bundle is loaded): a 404 here means
        # no such route, whatever the state of the service.
        transport = httpx.ASGITransport(app=main.create_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://fmrec") as client:
            return (await client.get(path)).status_code

    (path,) = paths
    assert asyncio.run(get()) == 200


# --- the image's scripts, run here with the image's settings ------------------------------

def _script_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMREC_")}
    env.update(image_env())
    env.update(PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               FMREC_EMBEDDED_REDIS_PATH=str(tmp_path / "redis.db"), **extra)
    return env


def test_entrypoint_refuses_to_serve_without_a_bundle(tmp_path: Path) -> None:
    entry = str(REPO / "docker" / "entrypoint.sh")
    missing = tmp_path / "nowhere"
    for args, named in (([], "/bundles/current"),
                        (["--port", "1", "--bundle", str(missing)], str(missing)),
                        ([f"--bundle={missing}"], str(missing))):
        run = subprocess.run([entry, "fmrec", "serve", *args], capture_output=True, text=True,
                             env=_script_env(tmp_path), timeout=30)
        assert run.returncode == 2
        assert run.stdout == ""
        assert run.stderr.startswith(f"fmrec: error: no model bundle at {named}: mount")
        assert run.stderr.count("\n") == 1
    # Any other command runs unchanged, bundle or not.
    run = subprocess.run([entry, "echo", "fmrec", "serve"], capture_output=True, text=True,
                         env=_script_env(tmp_path), timeout=30)
    assert (run.returncode, run.stdout) == (0, "fmrec serve\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path,
           small_bundle_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, str]]]:
    """The image's ENTRYPOINT + CMD, run as a process here with the image's environment."""
    pytest.importorskip("app.main", reason="app.main (the service) is not there yet")
    env = _script_env(tmp_path, FMREC_BUNDLE=str(small_bundle_path), FMREC_HOST="127.0.0.1",
                      FMREC_PORT=str(_free_port()))
    command = [str(REPO / "docker" / "entrypoint.sh"), *exec_form("CMD")]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield server, env
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()


def test_healthcheck_passes_against_the_started_image_command(
        served: tuple[subprocess.Popen[bytes], dict[str, str]], tmp_path: Path) -> None:
    server, env = served
    deadline = time.monotonic() + 120
    while server.poll() is None and time.monotonic() < deadline:
        check = subprocess.run(healthcheck(), env=env, capture_output=True, timeout=30)
        if check.returncode == 0:
            return
        time.sleep(0.5)
    pytest.fail(f"no healthy server (exit status {server.poll()}):\n"
                + (tmp_path / "server.log").read_text()[-3000:])


def test_started_image_command_logs_no_tensorflow_noise_and_no_progress_bar(
        served: tuple[subprocess.Popen[bytes], dict[str, str]], tmp_path: Path) -> None:
    """Container logs are read without a terminal: the server's output, from start to
    serving, carries neither TensorFlow's start-up lines nor progress-bar updates."""
    server, env = served
    url = f"http://127.0.0.1:{env['FMREC_PORT']}/readyz"
    deadline = time.monotonic() + 120
    while server.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=5, trust_env=False).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    else:
        pytest.fail(f"not ready: {(tmp_path / 'server.log').read_text()[-3000:]}")
    found = log_findings((tmp_path / "server.log").read_text())
    assert found["tensorflow_noise"] == []
    assert found["progress_bar_renders"] == 0


def test_tensorflow_noise_is_recognised_without_the_image_settings(tmp_path: Path) -> None:
    """The noise check can fail: TensorFlow started without the image's settings prints
    exactly what log_findings looks for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "FMREC_"))}
    run = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.constant(1) + 1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert log_findings(run.stderr)["tensorflow_noise"]
    env.update({k: v for k, v in image_env().items() if k.startswith("TF_")})
    run = subprocess.run([sys.executable, "-c", "import tensorflow as tf; tf.constant(1) + 1"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert (run.returncode, run.stdout, run.stderr) == (0, "", "")


@pytest.mark.parametrize(("setting", "error"), [
    ({"FMREC_ENGINE": "fastest"}, "bad setting: FMREC_ENGINE: "),
    ({"FMREC_WORKERS": "0"}, "bad setting: FMREC_WORKERS: "),
    ({"FMREC_REDIS_URL": "mysql://db:3306"}, "bad setting: FMREC_REDIS_URL: "),
    ({"FMREC_PORT": "http"}, "bad setting: FMREC_PORT: "),
    ({"FMREC_LOG_LEVEL": "loud"}, "bad setting: FMREC_LOG_LEVEL: "),
], ids=lambda v: next(iter(v)) if isinstance(v, dict) else "")
def test_image_command_stops_with_one_line_on_a_bad_setting(
        setting: dict[str, str], error: str, tmp_path: Path, small_bundle_path: Path) -> None:
    env = _script_env(tmp_path, FMREC_BUNDLE=str(small_bundle_path), **setting)
    run = subprocess.run([str(REPO / "docker" / "entrypoint.sh"), *exec_form("CMD")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith(f"fmrec: error: {error}"), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


def test_image_command_stops_with_one_line_on_an_incomplete_bundle(tmp_path: Path) -> None:
    bundle = tmp_path / "half"
    bundle.mkdir()
    (bundle / "model_id").write_text("abc\n")
    env = _script_env(tmp_path, FMREC_BUNDLE=str(bundle))
    run = subprocess.run([str(REPO / "docker" / "entrypoint.sh"), *exec_form("CMD")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert (run.returncode, run.stdout) == (2, "")
    assert run.stderr.startswith(f"fmrec: error: bundle {bundle} is incomplete: "), run.stderr
    assert run.stderr.count("\n") == 1, run.stderr


@pytest.mark.parametrize(("setting", "error"), [
    ({"FMREC_DEMO_RATINGS": "lots"},
     "fmrec-bootstrap: error: FMREC_DEMO_RATINGS must be a positive whole number, not 'lots'"),
    ({"FMREC_DEMO_RATINGS": "0"},
     "fmrec-bootstrap: error: FMREC_DEMO_RATINGS must be a positive whole number, not '0'"),
    ({"FMREC_BUNDLE": ""}, "FMREC_BUNDLE: set FMREC_BUNDLE to the bundle directory"),
], ids=["ratings-word", "ratings-zero", "no-bundle-path"])
def test_bootstrap_stops_with_one_line_on_a_bad_setting(setting: dict[str, str], error: str,
                                                        tmp_path: Path) -> None:
    env = _script_env(tmp_path, FMREC_BUNDLE=str(tmp_path / "b"), FMREC_DATA="/nowhere")
    env.update(setting)
    run = subprocess.run([str(REPO / "docker" / "bootstrap.sh")], capture_output=True,
                         text=True, env=env, timeout=120)
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert run.stderr.count("\n") == 1 and error in run.stderr, run.stderr
    assert not (tmp_path / "b").exists()


def test_healthcheck_fails_when_nothing_listens(tmp_path: Path) -> None:
    env = _script_env(tmp_path, FMREC_PORT=str(_free_port()))
    check = subprocess.run(healthcheck(), env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode == 1
    assert "Connection refused" in check.stderr


def test_bootstrap_trains_a_demo_bundle_once_and_then_keeps_it(tmp_path: Path) -> None:
    bundle = tmp_path / "bundles" / "current"
    env = _script_env(tmp_path, FMREC_BUNDLE=str(bundle), FMREC_DATA=str(tmp_path / "no-ml"),
                      FMREC_DEMO_RATINGS="2000")
    script = str(REPO / "docker" / "bootstrap.sh")
    first = subprocess.run([script], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "training on synthetic demo data" in first.stdout
    # Read as container logs (no terminal): no TensorFlow start-up lines, no progress bar.
    found = log_findings(first.stdout + first.stderr)
    assert (found["tensorflow_noise"], found["progress_bar_renders"]) == ([], 0)
    model_id = (bundle / "model_id").read_text().strip()
    metrics = json.loads((bundle / "metrics.json").read_text())
    assert metrics["train_ratings"] + metrics["test_ratings"] == 2000
    second = subprocess.run([script], env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr[-3000:]
    assert second.stdout == f"fmrec-bootstrap: model {model_id} already at {bundle}; not training\n"
    assert (bundle / "model_id").read_text().strip() == model_id


# --- the compose files ------------------------------------------------------------------

@pytest.mark.parametrize("path", [COMPOSE_GPU, COMPOSE_CPU], ids=lambda p: p.name)
def test_compose_file_matches_the_compose_specification(path: Path) -> None:
    assert schema_errors(load_compose(path)) == []


@pytest.mark.parametrize(("service", "path", "value"), [
    ("api", ["depends_on", "train", "condition"], "service_done"),
    ("redis", ["healthcheck", "interval"], ["5s"]),
    ("api", ["restart"], 5),
])
def test_schema_check_rejects_a_broken_compose_file(service: str, path: list[str],
                                                    value: Any) -> None:
    broken = copy.deepcopy(load_compose(COMPOSE_GPU))
    node = broken["services"][service]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    errors = schema_errors(broken)
    assert errors, f"the schema accepted {service}.{'.'.join(path)} = {value!r}"
    assert all(e.startswith(f"services/{service}") for e in errors), errors


def test_compose_stack_wiring() -> None:
    compose = load_compose(COMPOSE_GPU)
    redis, train, api = (compose["services"][s] for s in ("redis", "train", "api"))
    assert redis["image"].startswith("redis:")
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert any(v.split(":")[0] in compose["volumes"] and v.endswith(":/data")
               for v in redis["volumes"])
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    for service in (train, api):
        assert gpu_devices(service) == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
        assert {"path": ".env.example"} in service["env_file"]
        assert service["environment"]["FMREC_REDIS_URL"] == "redis://redis:6379/0"
        assert service["environment"]["FMREC_BUNDLE"] == "/bundles/current"
        assert service["depends_on"]["redis"] == {"condition": "service_healthy"}
    assert api["depends_on"]["train"] == {"condition": "service_completed_successfully"}
    assert "bundles:/bundles:ro" in api["volumes"]
    assert "bundles:/bundles" in train["volumes"]
    assert "bundles" in compose["volumes"]
    copies = {shlex.split(r)[1]: shlex.split(r)[0] for r in instructions("COPY")}
    assert copies[f"/usr/local/bin/{train['command'][0]}"] == "docker/bootstrap.sh"
    assert api["environment"]["FMREC_HOST"] == "0.0.0.0"
    assert api["ports"] == [f"127.0.0.1:{image_env()['FMREC_PORT']}:8000"]


def compose_config(*files: Path) -> dict[str, Any]:
    try:
        binary = compose_binary()
    except CannotRun as exc:
        pytest.skip(str(exc))
    args = [a for f in files for a in ("-f", str(f))]
    run = subprocess.run([*binary, *args, "config", "--format", "json"], cwd=REPO,
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")})
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_docker_compose_config_gpu() -> None:
    services = compose_config(COMPOSE_GPU)["services"]
    assert all(gpu_devices(services[s]) for s in ("api", "train"))
    assert services["api"]["image"] == services["train"]["image"] == "fmrec:gpu"
    assert "BASE_IMAGE" not in services["api"]["build"].get("args", {})


def test_docker_compose_config_cpu_override_drops_the_gpu() -> None:
    services = compose_config(COMPOSE_GPU, COMPOSE_CPU)["services"]
    for name in ("api", "train"):
        assert gpu_devices(services[name]) == [], name
        assert services[name]["image"] == "fmrec:cpu"
        assert services[name]["build"]["args"]["BASE_IMAGE"].startswith("tensorflow/tensorflow:")
    assert services["api"]["depends_on"]["train"]["condition"] == "service_completed_successfully"


# --- settings documentation ------------------------------------------------------------

def env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (REPO / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {key: value for key, value in pairs}


def test_env_example_sets_every_setting_to_its_default(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.settings import Settings

    prefix = Settings.model_config["env_prefix"]
    assert set(env_example()) == {prefix + name.upper() for name in Settings.model_fields}
    for key in list(os.environ):
        if key.startswith(prefix):
            monkeypatch.delenv(key)
    assert Settings(_env_file=REPO / ".env.example") == Settings(_env_file=None)


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text()
    missing = [key for key in env_example() if f"`{key}`" not in readme]
    assert missing == []
