"""docker-compose.yml and the Dockerfiles, checked against the repository (no Docker engine needed).

Every COPY source exists and is not excluded by .dockerignore, every command and module exists,
ports and healthchecks agree, the environment is what the service's settings read, and each image's
requirements cover the third-party modules its sources import.
"""

from __future__ import annotations

import ast
import fnmatch
import re
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
BUILD_TOOLS = ("gcc", "g++", "build-essential", "make", "cmake", "clang", "python3-dev", "-dev ")
# import name -> distribution name, where they differ
DIST_OF = {"PIL": "pillow", "yaml": "pyyaml", "skimage": "scikit-image", "multipart": "python-multipart",
           "prometheus_client": "prometheus-client", "pydantic_settings": "pydantic-settings",
           "gradio_client": "gradio_client"}
PREINSTALLED = {"torch", "torchvision"}  # installed from the PyTorch index before the requirements file


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: its FROM line and (instruction, arguments) pairs, continuations joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[Stage] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        op, args = op.upper(), args.strip()
        if op == "FROM":
            parts = args.split()
            stages.append(Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None))
        elif stages:
            stages[-1].instructions.append((op, args))
    return stages


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
               for pat in patterns for p in prefixes)


def dockerfile_of(service: str) -> Path:
    build = SERVICES[service]["build"]
    assert build["context"] == ".", f"{service}: build context must be the repository root"
    return ROOT / build["dockerfile"]


def env_of(stages: list[Stage]) -> dict[str, str]:
    """ENV of the final stage (``KEY=value`` pairs, as one instruction or several)."""
    env: dict[str, str] = {}
    for op, args in stages[-1].instructions:
        if op == "ENV":
            env.update(pair.split("=", 1) for pair in shlex.split(args))
    return env


def exec_form(args: str) -> list[str]:
    import json

    return json.loads(args)


def assert_command_exists(argv: list[str]) -> None:
    """``python -m pkg`` needs pkg/__main__.py; ``python file.py`` needs the file, relative to WORKDIR /app."""
    assert argv[0] in ("python", "python3"), argv
    if argv[1] == "-m":
        module = argv[2].replace(".", "/")
        assert (ROOT / module / "__main__.py").is_file() or (ROOT / f"{module}.py").is_file(), argv
    elif argv[1] != "-c":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist in the repository"


@pytest.mark.parametrize("service", ["backend", "app", "trainer"])
def test_copy_sources_exist_and_are_in_the_build_context(service):
    stages = parse_dockerfile(dockerfile_of(service))
    patterns = dockerignore_patterns()
    copies = [args for stage in stages for op, args in stage.instructions if op == "COPY"]
    local = [c for c in copies if not c.startswith("--from")]
    assert local, f"{service}: no COPY of sources"
    for args in local:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"{service}: COPY source {src} does not exist"
            assert not ignored(src.rstrip("/"), patterns), f"{service}: COPY source {src} is in .dockerignore"


@pytest.mark.parametrize(("service", "base"), [("backend", "python:"), ("app", "python:"),
                                               ("trainer", "${CUDA_IMAGE}")])
def test_images_are_multi_stage_slim_non_root_and_without_build_tools(service, base):
    path = dockerfile_of(service)
    stages = parse_dockerfile(path)
    final = stages[-1]
    assert len(stages) >= 2 and any(a.startswith("--from=build") for op, a in final.instructions if op == "COPY")
    assert final.base.startswith(base)
    if base == "python:":
        assert final.base.endswith("-slim")
    else:
        assert "nvidia/cuda:" in path.read_text() and "runtime" in path.read_text()
    users = [a for op, a in final.instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    final_runs = " ".join(a for op, a in final.instructions if op == "RUN") + " "
    assert not [t for t in BUILD_TOOLS if t in final_runs], f"{service}: build tools in the final image"
    assert SERVICES[service]["user"].split(":")[0] not in ("root", "0")


def test_backend_uses_cpu_torch_wheels_and_trainer_cuda_wheels():
    backend = dockerfile_of("backend").read_text()
    trainer = dockerfile_of("trainer").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in backend
    assert re.search(r"TORCH_INDEX_URL=https://download\.pytorch\.org/whl/cu\d+", trainer)
    assert not _requirements("app") & PREINSTALLED, "the app image must not install torch"


@pytest.mark.parametrize("service", ["backend", "app", "trainer"])
def test_commands_and_modules_exist(service):
    final = parse_dockerfile(dockerfile_of(service))[-1]
    for op, args in final.instructions:
        if op == "ENTRYPOINT" or (op == "CMD" and not any(o == "ENTRYPOINT" for o, _ in final.instructions)):
            assert_command_exists(exec_form(args))
        if op == "WORKDIR":
            assert args == "/app", "commands are checked relative to WORKDIR /app = repository root"
    if "entrypoint" in SERVICES[service]:
        assert_command_exists(SERVICES[service]["entrypoint"])


def _container_ports(service: str) -> list[int]:
    return [int(str(p).split(":")[-1]) for p in SERVICES[service]["ports"]]


def _healthcheck_url(test: list[str] | str) -> str:
    text = test if isinstance(test, str) else " ".join(test)
    match = re.search(r"http://[^'\" ]+", text)
    assert match, f"healthcheck without a URL: {text}"
    return match.group(0)


def test_backend_ports_healthcheck_and_env_agree_with_its_settings(monkeypatch):
    from backend.settings import Settings

    service = SERVICES["backend"]
    stages = parse_dockerfile(dockerfile_of("backend"))
    env = {**env_of(stages), **{k: str(v) for k, v in service["environment"].items()}}
    fields = set(Settings.model_fields)
    for key in env:
        if key.startswith("DINO_"):
            assert key[5:].lower() in fields, f"{key} is not read by backend.settings (fields: {sorted(fields)})"
    for key in list(__import__("os").environ):
        if key.startswith("DINO_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0" and _container_ports("backend") == [settings.port]
    exposed = [int(a) for op, a in stages[-1].instructions if op == "EXPOSE"]
    assert exposed == [settings.port]
    for url in (_healthcheck_url(service["healthcheck"]["test"]),
                _healthcheck_url([a for op, a in stages[-1].instructions if op == "HEALTHCHECK"][0])):
        assert urlparse(url).port == settings.port and urlparse(url).path == "/readyz"
    mounts = {v.split(":")[1]: v for v in service["volumes"]}
    assert mounts[str(settings.checkpoint_dir)] == f"./checkpoints:{settings.checkpoint_dir}:ro"
    cache_volume = mounts[str(settings.cache_dir)].split(":")[0]
    assert cache_volume in COMPOSE["volumes"], "downloaded weights need a named volume"


def test_checkpoints_folder_with_the_shipped_model_is_mounted_readable():
    """checkpoints/, where the shipped dino_vits16_duts.safetensors lies, is the backend's checkpoint dir,
    mounted read-only for uid 10001: every model file there must be world-readable (exports are 0600)."""
    from backend.settings import Settings

    backend = SERVICES["backend"]
    folder = backend["environment"]["DINO_CHECKPOINT_DIR"]
    assert f"./checkpoints:{folder}:ro" in backend["volumes"]
    assert Settings.model_fields["checkpoint_dir"].default == Path("checkpoints")  # the same folder locally
    files = {p for p in (ROOT / "checkpoints").glob("*") if p.is_file() and not p.name.startswith(".")
             and p.suffix in (".pth", ".pt", ".safetensors")}
    unreadable = sorted(p.name for p in files if not p.stat().st_mode & 0o004)
    assert not unreadable, (f"the backend container (uid 10001) cannot read {unreadable}; "
                            f"run: chmod a+r {' '.join('checkpoints/' + n for n in unreadable)}")


def test_app_reaches_the_backend_and_publishes_its_port():
    app, backend = SERVICES["app"], SERVICES["backend"]
    url = urlparse(app["environment"]["BACKEND_URL"])
    assert url.hostname == "backend" and url.port == _container_ports("backend")[0]
    assert app["depends_on"]["backend"]["condition"] == "service_healthy"
    port = int(app["environment"]["GRADIO_SERVER_PORT"])
    assert _container_ports("app") == [port] == [7860]
    assert urlparse(_healthcheck_url(app["healthcheck"]["test"])).port == port
    env = env_of(parse_dockerfile(dockerfile_of("app")))
    assert env["GRADIO_SERVER_NAME"] == "0.0.0.0" and urlparse(env["BACKEND_URL"]).hostname == "backend"
    assert "profiles" not in app and "profiles" not in backend


def test_trainer_is_a_gpu_profile_with_data_and_runs_volumes():
    from trainer.train.config import build_parser

    trainer = SERVICES["trainer"]
    assert trainer["profiles"] == ["train"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in trainer["volumes"]}
    assert {"/data", "/runs"} <= set(mounts) and {mounts["/data"], mounts["/runs"]} <= set(COMPOSE["volumes"])
    assert trainer["entrypoint"] == ["python", "trainer/run.py"]
    args = build_parser().parse_args(trainer["command"])  # every flag is one trainer/run.py accepts
    assert args.data_path.startswith("/data") and args.output_dir.startswith("/runs")


def _third_party_imports(folder: Path) -> set[str]:
    names: set[str] = set()
    for path in folder.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
    local = {"app", "backend", "trainer", "tests"}
    return {n for n in names if n not in local and n not in sys.stdlib_module_names}


def _requirements(name: str) -> set[str]:
    lines = (ROOT / f"docker/requirements-{name}.txt").read_text().splitlines()
    return {re.split(r"[<>=\[ ]", ln.strip())[0].lower() for ln in lines if ln.strip() and not ln.startswith("#")}


@pytest.mark.parametrize(("image", "folders"), [("backend", ["backend", "trainer"]), ("app", ["app"]),
                                                ("trainer", ["trainer"])])
def test_requirements_cover_every_import(image, folders):
    provided = _requirements(image) | (PREINSTALLED if image != "app" else set())
    needed = set().union(*(_third_party_imports(ROOT / f) for f in folders))
    missing = {n for n in needed if DIST_OF.get(n, n).lower().replace("_", "-") not in
               {p.replace("_", "-") for p in provided}}
    assert not missing, f"docker/requirements-{image}.txt lacks {sorted(missing)}"
