"""docker-compose.yml and the Dockerfiles, checked against the repository (no Docker engine needed).

Every COPY source exists and is not excluded by .dockerignore, every command and module exists,
ports and healthchecks agree, the environment is what the service's settings read, each image's
requirements are exactly what its copied sources import, the base images and build inputs are
build args (no BuildKit-only syntax, no CA bundle or wheelhouse in a final stage), read-only
containers write only to tmpfs or volumes, and the CPU training profile feeds the backend that
serves it. ``make compose-check`` (docker/compose_check.py) runs the stack for real.
"""

from __future__ import annotations

import ast
import fnmatch
import os
import re
import shlex
import shutil
import subprocess
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
DIST_OF = {
    "PIL": "pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "multipart": "python-multipart",
    "prometheus_client": "prometheus-client",
    "pydantic_settings": "pydantic-settings",
    "gradio_client": "gradio_client",
}
PREINSTALLED = {
    "torch",
    "torchvision",
}  # installed from the PyTorch index before the requirements file


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages of a Dockerfile: FROM and (instruction, arguments) pairs, continuations joined."""
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
            stages.append(
                Stage(parts[0], parts[2] if len(parts) > 2 and parts[1].upper() == "AS" else None)
            )
        elif stages:
            stages[-1].instructions.append((op, args))
    return stages


def global_args(path: Path) -> dict[str, str]:
    """``ARG name=default`` lines before the first FROM (the ones a FROM line may use)."""
    args: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("FROM"):
            break
        if line.startswith("ARG "):
            args.update(_arg_pairs(line[4:]))
    return args


def _arg_pairs(text: str) -> dict[str, str]:
    return dict(pair.split("=", 1) if "=" in pair else (pair, "") for pair in shlex.split(text))


def stage_args(stage: Stage) -> dict[str, str]:
    args: dict[str, str] = {}
    for op, text in stage.instructions:
        if op == "ARG":
            args.update(_arg_pairs(text))
    return args


def expand(text: str, values: dict[str, str]) -> str:
    """Docker's ``${NAME}``/``$NAME`` and compose's ``${NAME:-default}``, given the defaults."""

    def one(match: re.Match) -> str:
        name, default = match.group(1) or match.group(3), match.group(2)
        return values.get(name, default if default is not None else "")

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", one, text)


def dockerignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip().rstrip("/") for ln in lines if ln.strip() and not ln.startswith("#")]


def ignored(path: str, patterns: list[str]) -> bool:
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(
        fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.removeprefix("**/"))
        for pat in patterns
        for p in prefixes
    )


def dockerfile_of(service: str) -> Path:
    build = SERVICES[service]["build"]
    assert build["context"] == ".", f"{service}: build context must be the repository root"
    return ROOT / build["dockerfile"]


def mounts_of(service: str) -> dict[str, str]:
    """Container path -> source (host path or volume name), compose defaults substituted."""
    pairs = [expand(v, {}).split(":") for v in SERVICES[service].get("volumes", [])]
    return {p[1]: p[0] for p in pairs}


def build_arg_defaults(service: str) -> dict[str, str]:
    """The build args compose passes to ``service`` when no environment variable is set."""
    return {k: expand(str(v), {}) for k, v in SERVICES[service]["build"].get("args", {}).items()}


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
    """``python -m pkg`` needs pkg/__main__.py; ``python file.py`` the file (WORKDIR /app)."""
    assert argv[0] in ("python", "python3"), argv
    if argv[1] == "-m":
        module = argv[2].replace(".", "/")
        assert (ROOT / module / "__main__.py").is_file() or (ROOT / f"{module}.py").is_file(), argv
    elif argv[1] != "-c":
        assert (ROOT / argv[1]).is_file(), f"{argv[1]} does not exist in the repository"


IMAGE_SERVICES = ["backend", "app", "trainer", "trainer-cpu"]


@pytest.mark.parametrize("service", IMAGE_SERVICES)
def test_copy_sources_exist_and_are_in_the_build_context(service):
    path = dockerfile_of(service)
    patterns = dockerignore_patterns()
    local = []
    for stage in parse_dockerfile(path):
        values = {**global_args(path), **stage_args(stage), **build_arg_defaults(service)}
        local += [
            expand(a, values) for op, a in stage.instructions if op == "COPY" and "--from" not in a
        ]
    assert local, f"{service}: no COPY of sources"
    for args in local:
        *sources, _dest = shlex.split(args)
        for src in sources:
            assert (ROOT / src).exists(), f"{service}: COPY source {src} does not exist"
            assert not ignored(src.rstrip("/"), patterns), (
                f"{service}: COPY source {src} is in .dockerignore"
            )


@pytest.mark.parametrize(
    ("service", "arg", "default"),
    [
        ("backend", "BASE_IMAGE", "python:3.11-slim"),
        ("app", "BASE_IMAGE", "python:3.11-slim"),
        ("trainer", "CUDA_IMAGE", "nvidia/cuda:"),
    ],
)
def test_images_are_multi_stage_non_root_from_a_base_build_arg_without_build_tools(
    service, arg, default
):
    path = dockerfile_of(service)
    stages = parse_dockerfile(path)
    final = stages[-1]
    assert len(stages) >= 2 and any(
        a.startswith("--from=build") for op, a in final.instructions if op == "COPY"
    )
    assert {s.base for s in stages} == {f"${{{arg}}}"}, "every stage starts from the base build arg"
    assert global_args(path)[arg].startswith(default), (
        "the default is what a user with internet expects"
    )
    if arg == "CUDA_IMAGE":
        assert "runtime" in global_args(path)[arg]
    assert build_arg_defaults(service)[arg] == global_args(path)[arg], (
        "compose and Dockerfile defaults differ"
    )
    users = [a for op, a in final.instructions if op == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    final_runs = " ".join(a for op, a in final.instructions if op == "RUN") + " "
    assert not [t for t in BUILD_TOOLS if t in final_runs], (
        f"{service}: build tools in the final image"
    )
    assert SERVICES[service]["user"].split(":")[0] not in ("root", "0")


@pytest.mark.parametrize("service", IMAGE_SERVICES)
def test_no_buildkit_only_syntax_and_build_inputs_stay_in_the_build_stage(service):
    """Debian's engine 20.10 builds without BuildKit: no ``# syntax=`` frontend (a registry
    pull), no ``RUN --mount``/``COPY --chmod``/heredocs. The CA bundle and the wheelhouse enter
    build stages only."""
    path = dockerfile_of(service)
    text = path.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert not re.search(r"--mount|--chmod|--link|<<", text)
    stages = parse_dockerfile(path)
    for stage in stages[:-1]:
        copies = " ".join(a for op, a in stage.instructions if op == "COPY")
        assert "${CA_DIR}" in copies and "${WHEELHOUSE}" in copies
    final_copies = [a for op, a in stages[-1].instructions if op == "COPY"]
    assert not [a for a in final_copies if "CA_DIR" in a or "WHEELHOUSE" in a or "certs" in a]
    assert not [a for op, a in stages[-1].instructions if op == "ENV" and "PIP_CERT" in a]


def test_backend_image_copies_only_the_model_package_and_the_service():
    final = parse_dockerfile(dockerfile_of("backend"))[-1]
    sources = sorted(
        shlex.split(a)[0] for op, a in final.instructions if op == "COPY" and "--from" not in a
    )
    assert sources == ["backend/", "trainer/__init__.py", "trainer/model/"]


# Requirements that the copied sources do not import by name but need at run time.
RUNTIME_ONLY = {
    "backend": {"python-multipart": "FastAPI's form parser", "uvicorn": "uvicorn[standard]"},
    "app": {},
    "trainer": {},
}


@pytest.mark.parametrize(
    ("image", "folders"),
    [("backend", ["backend", "trainer/model"]), ("app", ["app"]), ("trainer", ["trainer"])],
)
def test_requirements_are_exactly_what_the_copied_sources_import(image, folders):
    """Every third-party import is provided, and nothing is installed that no copied source imports
    (the service image carries no training-only dependency such as tqdm)."""
    provided = {_dist(p) for p in _requirements(image)}
    needed = {
        _dist(DIST_OF.get(n, n))
        for n in set().union(*(_third_party_imports(ROOT / f) for f in folders))
    }
    extra = provided - needed - set(RUNTIME_ONLY[image])
    assert not needed - provided - (PREINSTALLED if image != "app" else set()), (
        f"docker/requirements-{image}.txt lacks {sorted(needed - provided)}"
    )
    assert not extra, (
        f"docker/requirements-{image}.txt installs {sorted(extra)}, which no copied source imports"
    )


def test_backend_uses_cpu_torch_wheels_and_trainer_cuda_wheels():
    backend = stage_args(parse_dockerfile(dockerfile_of("backend"))[0])
    trainer = stage_args(parse_dockerfile(dockerfile_of("trainer"))[0])
    assert backend["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", trainer["TORCH_INDEX_URL"])
    assert build_arg_defaults("backend")["TORCH_INDEX_URL"] == backend["TORCH_INDEX_URL"]
    assert build_arg_defaults("trainer")["TORCH_INDEX_URL"] == trainer["TORCH_INDEX_URL"]
    assert build_arg_defaults("trainer-cpu")["TORCH_INDEX_URL"] == backend["TORCH_INDEX_URL"]
    assert build_arg_defaults("trainer-cpu")["CUDA_IMAGE"] == "python:3.11-slim"
    assert not _requirements("app") & PREINSTALLED, "the app image must not install torch"
    assert "TORCH_INDEX_URL" not in (ROOT / "docker/app.Dockerfile").read_text()


def test_build_context_holds_the_wheelhouse_but_no_data_weights_or_environments():
    patterns = dockerignore_patterns()
    for path in (
        "docker/wheelhouse/torch-2.4.0+cpu-cp311-cp311-linux_x86_64.whl",
        "docker/certs/ca.crt",
        "docker/pip_install.sh",
        "docker/requirements-backend.txt",
    ):
        assert not ignored(path, patterns), path
    for path in (
        ".venv/bin/python",
        "data/train/a.jpg",
        "checkpoints/x.safetensors",
        "runs/r/log.txt",
        ".git/HEAD",
        "trainer/__pycache__/x.pyc",
    ):
        assert ignored(path, patterns), path
    gitignore = (ROOT / ".gitignore").read_text()
    assert "docker/wheelhouse*/*" in gitignore and "docker/certs/*" in gitignore


@pytest.mark.parametrize("service", IMAGE_SERVICES)
def test_commands_and_modules_exist(service):
    final = parse_dockerfile(dockerfile_of(service))[-1]
    for op, args in final.instructions:
        if op == "ENTRYPOINT" or (
            op == "CMD" and not any(o == "ENTRYPOINT" for o, _ in final.instructions)
        ):
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


def _seconds(value: str) -> float:
    return sum(
        float(n) * {"s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"([\d.]+)([smh])", value)
    )


@pytest.mark.parametrize("service", ["backend", "app"])
def test_healthchecks_agree_and_report_within_seconds(service):
    """Compose repeats the image's HEALTHCHECK; probes come often enough that dependants start
    soon after readiness, and the start period covers a cold start on a small CPU."""
    compose = SERVICES[service]["healthcheck"]
    final = parse_dockerfile(dockerfile_of(service))[-1]
    image = dict(
        re.findall(
            r"--([\w-]+)=(\S+)", [a for op, a in final.instructions if op == "HEALTHCHECK"][0]
        )
    )
    assert _seconds(compose["interval"]) == _seconds(image["interval"]) <= 10
    assert _seconds(compose["timeout"]) == _seconds(image["timeout"]) < _seconds(image["interval"])
    assert _seconds(compose["start_period"]) == _seconds(image["start-period"]) >= 60
    assert compose["retries"] == int(image["retries"])
    assert _healthcheck_url(compose["test"]) == _healthcheck_url(
        [a for op, a in final.instructions if op == "HEALTHCHECK"][0]
    )


@pytest.mark.parametrize("service", ["backend", "app", "backend-trained"])
def test_read_only_services_write_only_to_tmpfs_or_volumes(service):
    """With a read-only root filesystem every directory the image points its caches at (matplotlib,
    gradio, XDG, the example photos, the model cache) lies on a tmpfs or a volume."""
    spec = SERVICES[service]
    assert spec["read_only"] is True and spec["user"] == "10001:10001"
    writable = [t.split(":")[0] for t in spec["tmpfs"]]
    writable += [
        dest
        for dest, src in mounts_of(service).items()
        if src in COMPOSE["volumes"]
        and not [v for v in spec.get("volumes", []) if v.endswith(f"{dest}:ro")]
    ]
    image = service if service != "backend-trained" else "backend"
    env = {
        **env_of(parse_dockerfile(dockerfile_of(image))),
        **{k: str(v) for k, v in spec["environment"].items()},
    }
    dirs = {
        k: v
        for k, v in env.items()
        if k
        in (
            "MPLCONFIGDIR",
            "XDG_CACHE_HOME",
            "GRADIO_TEMP_DIR",
            "DINO_APP_EXAMPLES_DIR",
            "DINO_CACHE_DIR",
            "HOME",
        )
    }
    assert "MPLCONFIGDIR" in dirs and "XDG_CACHE_HOME" in dirs
    if image == "app":
        assert {"GRADIO_TEMP_DIR", "DINO_APP_EXAMPLES_DIR"} <= set(dirs)
    for key, folder in dirs.items():
        if key == "HOME":
            continue  # created by useradd; nothing is written there when the caches point elsewhere
        assert any(folder == w or folder.startswith(w.rstrip("/") + "/") for w in writable), (
            f"{service}: {key}={folder} is not on a tmpfs or volume ({writable})"
        )


def test_backend_ports_healthcheck_and_env_agree_with_its_settings(monkeypatch):
    from backend.settings import Settings

    service = SERVICES["backend"]
    stages = parse_dockerfile(dockerfile_of("backend"))
    env = {**env_of(stages), **{k: expand(str(v), {}) for k, v in service["environment"].items()}}
    fields = set(Settings.model_fields)
    for key in env:
        if key.startswith("DINO_"):
            assert key[5:].lower() in fields, (
                f"{key} is not read by backend.settings (fields: {sorted(fields)})"
            )
    for key in list(__import__("os").environ):
        if key.startswith("DINO_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.host == "0.0.0.0" and _container_ports("backend") == [settings.port]
    exposed = [int(a) for op, a in stages[-1].instructions if op == "EXPOSE"]
    assert exposed == [settings.port]
    for url in (
        _healthcheck_url(service["healthcheck"]["test"]),
        _healthcheck_url([a for op, a in stages[-1].instructions if op == "HEALTHCHECK"][0]),
    ):
        assert urlparse(url).port == settings.port and urlparse(url).path == "/readyz"
    mounts = mounts_of("backend")
    assert mounts[str(settings.checkpoint_dir)] == "./checkpoints"
    assert f"./checkpoints:{settings.checkpoint_dir}:ro" in service["volumes"]
    assert mounts[str(settings.cache_dir)] in COMPOSE["volumes"], (
        "downloaded weights need a named volume"
    )


def test_checkpoints_folder_with_the_shipped_model_is_mounted_readable():
    """checkpoints/, where the shipped dino_vits16_duts.safetensors lies, is the backend's
    checkpoint dir, mounted read-only for uid 10001: every model file there must be
    world-readable (exports are 0600)."""
    from backend.settings import Settings

    backend = SERVICES["backend"]
    folder = backend["environment"]["DINO_CHECKPOINT_DIR"]
    assert f"./checkpoints:{folder}:ro" in backend["volumes"]
    assert Settings.model_fields["checkpoint_dir"].default == Path(
        "checkpoints"
    )  # the same folder locally
    files = {
        p
        for p in (ROOT / "checkpoints").glob("*")
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix in (".pth", ".pt", ".safetensors")
    }
    unreadable = sorted(p.name for p in files if not p.stat().st_mode & 0o004)
    assert not unreadable, (
        f"the backend container (uid 10001) cannot read {unreadable}; "
        f"run: chmod a+r {' '.join('checkpoints/' + n for n in unreadable)}"
    )


def test_app_reaches_the_backend_and_publishes_its_port():
    app, backend = SERVICES["app"], SERVICES["backend"]
    url = urlparse(app["environment"]["BACKEND_URL"])
    assert url.hostname == "backend" and url.port == _container_ports("backend")[0]
    assert app["depends_on"]["backend"]["condition"] == "service_healthy"
    port = int(app["environment"]["GRADIO_SERVER_PORT"])
    assert _container_ports("app") == [port] == [7860]
    assert urlparse(_healthcheck_url(app["healthcheck"]["test"])).port == port
    env = env_of(parse_dockerfile(dockerfile_of("app")))
    assert (
        env["GRADIO_SERVER_NAME"] == "0.0.0.0"
        and urlparse(env["BACKEND_URL"]).hostname == "backend"
    )
    assert "profiles" not in app and "profiles" not in backend


def test_compose_file_parses_for_compose_1_29_and_v2():
    """No top-level ``name:`` (1.29 refuses it; the project name comes from ``-p``), a version-less
    Compose-spec file, and published ports on loopback that the environment can move."""
    assert set(COMPOSE) <= {"services", "volumes", "x-build-args"}
    for service in ("backend", "app", "backend-trained"):
        (port,) = SERVICES[service]["ports"]
        assert re.fullmatch(r"127\.0\.0\.1:\$\{DINO_\w+_PORT:-\d+\}:\d+", port), port


@pytest.mark.parametrize("command", [["docker-compose"], ["docker", "compose"]])
def test_compose_config_is_accepted_by_the_installed_compose(command, tmp_path):
    """Where a compose is installed, its own parser validates the file (no engine needed)."""
    if shutil.which(command[0]) is None:
        pytest.skip(f"{command[0]} is not installed")
    version = subprocess.run([*command, "version"], capture_output=True, text=True, cwd=ROOT)
    if version.returncode != 0:
        pytest.skip(f"{' '.join(command)} is not installed")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DINO_", "BASE_IMAGE", "CUDA_IMAGE"))
    }
    done = subprocess.run(
        [*command, "-p", "dino", "--profile", "train", "--profile", "train-cpu", "config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    assert set(config["services"]) == {
        "backend",
        "app",
        "trainer",
        "trainer-cpu",
        "backend-trained",
    }
    assert config["services"]["backend"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"


def test_trainer_is_a_gpu_profile_with_data_and_runs_volumes():
    from trainer.train.config import build_parser

    trainer = SERVICES["trainer"]
    assert trainer["profiles"] == ["train"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    mounts = mounts_of("trainer")
    assert mounts["/runs"] in COMPOSE["volumes"] and mounts["/data"] == "./data"
    assert [v for v in trainer["volumes"] if v.endswith(":/data:ro")], (
        "training data is mounted read-only"
    )
    assert trainer["entrypoint"] == ["python", "trainer/run.py"]
    args = build_parser().parse_args(trainer["command"])  # every flag is one trainer/run.py accepts
    assert args.data_path.startswith("/data") and args.output_dir.startswith("/runs")


def _string_constants(folder: Path) -> set[str]:
    return {
        node.value
        for path in folder.rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }


def test_cpu_training_profile_trains_into_the_volume_the_trained_backend_serves():
    from trainer.train.config import build_parser

    trainer, served = SERVICES["trainer-cpu"], SERVICES["backend-trained"]
    assert trainer["profiles"] == served["profiles"] == ["train-cpu"]
    assert "deploy" not in trainer, "the CPU service reserves no GPU"
    args = build_parser().parse_args(trainer["command"])
    assert (
        args.device == "cpu"
        and args.arch == "vit_tiny"
        and args.epochs <= 3
        and args.num_workers == 0
    )
    runs = mounts_of("trainer-cpu")["/runs"]
    assert runs in COMPOSE["volumes"] and mounts_of("backend-trained")["/runs"] == runs
    env = served["environment"]
    assert env["DINO_CHECKPOINT_DIR"] == args.output_dir and env["DINO_ALLOW_DOWNLOADS"] == "false"
    assert f"{env['DINO_DEFAULT_MODEL']}.safetensors" in _string_constants(ROOT / "trainer"), (
        "the served model id is the stem of the trainer's exported backbone"
    )
    assert served["image"] == SERVICES["backend"]["image"]
    assert served["depends_on"]["trainer-cpu"]["condition"] == "service_completed_successfully"


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


def _dist(name: str) -> str:
    return name.lower().replace("_", "-")


def _requirements(name: str) -> set[str]:
    lines = (ROOT / f"docker/requirements-{name}.txt").read_text().splitlines()
    return {
        re.split(r"[<>=\[ ]", ln.strip())[0].lower()
        for ln in lines
        if ln.strip() and not ln.startswith("#")
    }


def _fake_wheel(folder: Path, name: str, members: list[str]) -> None:
    import zipfile

    with zipfile.ZipFile(folder / name, "w") as wheel:
        for member in members:
            wheel.writestr(member, b"")


@pytest.mark.parametrize(
    ("vision_members", "ok"),
    [
        (["torchvision/__init__.py", "torchvision.libs/libcudart.41118559.so.12"], False),
        (["torchvision/__init__.py", "torchvision/_C.so"], True),
    ],
)
def test_wheelhouse_check_refuses_a_cuda_torchvision_next_to_cpu_torch(
    tmp_path, vision_members, ok
):
    """The PyPI torchvision is a CUDA build: with CPU torch its operators do not load and
    ``import torchvision`` fails, so the offline build would make an image that cannot start."""
    _fake_wheel(
        tmp_path, "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl", ["torch/__init__.py"]
    )
    _fake_wheel(
        tmp_path, "torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl", vision_members
    )
    done = subprocess.run(
        ["bash", str(ROOT / "docker/fill_wheelhouse.sh"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "WHEELHOUSE": str(tmp_path)},
        timeout=60,
    )
    assert (done.returncode == 0) == ok, done.stderr
    assert ("CUDA build" in done.stderr) != ok
