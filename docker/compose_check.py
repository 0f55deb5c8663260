"""``make compose-check``: build the images, run the stack, use it, train -> serve, tear down.

Needs a Docker engine, ``docker compose`` (v2) or ``docker-compose`` (1.29), and for the browser
step Chromium at /usr/bin/chromium with Playwright in the virtual environment. Every step's time
and the images' sizes are printed; the exit status is non-zero when any check fails. The
stack runs under a throwaway project name on free loopback ports and is removed (``down -v``)
at the end, whatever happened. Environment (all optional):

  BASE_IMAGE, CA_DIR, WHEELHOUSE, TORCH_INDEX_URL_CPU   build args (docs/DOCKER.md)
  COMPOSE            the compose command, e.g. "docker-compose" (default: v2 when present)
  CHECK_OUT          where the screenshot and logs go (default /tmp/dino-compose-check)
  CHECK_SKIP_BUILD=1 use the images already built
  CHECK_ALLOW_CUDA_TORCH=1  accept a CUDA build of torch in the service image (where no CPU
                     build of torchvision is at hand); the check then says so instead of failing
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("compose_check")
ROOT = Path(__file__).resolve().parents[1]
OUT = Path(os.environ.get("CHECK_OUT", "/tmp/dino-compose-check"))
CHROMIUM = "/usr/bin/chromium"
USER = "10001:10001"
IMAGES = {"backend": "dino-backend:latest", "app": "dino-app:latest",
          "trainer-cpu": "dino-trainer-cpu:latest"}
HEALTH_TIMEOUT_S = 600
TIMINGS: list[tuple[str, float]] = []
WARNINGS: list[str] = []
# one captioned image per head in the per-head gallery
GALLERY_READY = """() => {
    const captions = document.querySelectorAll('#heads .caption-label').length;
    return captions > 0 && document.querySelectorAll('#heads img').length === captions;
}"""


class CheckFailed(RuntimeError):
    """One check of the stack did not hold."""


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


@contextmanager
def step(name: str) -> Iterator[None]:
    log.info("== %s", name)
    start = time.monotonic()
    try:
        yield
    finally:
        TIMINGS.append((name, time.monotonic() - start))
        log.info("== %s: %.1f s", name, TIMINGS[-1][1])


def sh(*argv: str, check: bool = True, capture: bool = True, timeout: float = 1800) -> str:
    log.debug("$ %s", shlex.join(argv))
    done = subprocess.run(argv, capture_output=capture, text=True, timeout=timeout, cwd=ROOT)
    if check and done.returncode != 0:
        tail = ((done.stdout or "") + (done.stderr or ""))[-4000:]
        raise CheckFailed(f"{shlex.join(argv)} exited with {done.returncode}:\n{tail}")
    return (done.stdout or "").strip()


def compose_command() -> list[str]:
    if os.environ.get("COMPOSE"):
        return shlex.split(os.environ["COMPOSE"])
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    expect(shutil.which("docker-compose") is not None, "no `docker compose`, no docker-compose")
    return ["docker-compose"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """The compose project under a throwaway name, with its own ports."""

    def __init__(self) -> None:
        self.project = f"dinocheck{os.getpid()}"
        self.ports = {"backend": free_port(), "app": free_port(), "trained": free_port()}
        os.environ.update(DINO_BACKEND_PORT=str(self.ports["backend"]),
                          DINO_APP_PORT=str(self.ports["app"]),
                          DINO_TRAINED_PORT=str(self.ports["trained"]),
                          DINO_ALLOW_DOWNLOADS="false", DINO_DATA_DIR=str(OUT / "train-images"))
        # creating a container from a large image can take minutes on a copying storage driver
        os.environ.setdefault("COMPOSE_HTTP_TIMEOUT", "900")
        os.environ.setdefault("DOCKER_CLIENT_TIMEOUT", "900")
        self.base = [*compose_command(), "-p", self.project, "--profile", "train-cpu"]

    def compose(self, *args: str, **kw) -> str:
        return sh(*self.base, *args, **kw)

    def container(self, service: str) -> str:
        cid = self.compose("ps", "-q", service)
        expect(bool(cid), f"no container for {service}")
        return cid.splitlines()[0]

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"


def image_size_mb(image: str) -> float:
    return int(sh("docker", "image", "inspect", "-f", "{{.Size}}", image)) / 1e6


def run_in_image(image: str, code: str) -> str:
    return sh("docker", "run", "--rm", "--read-only", "--tmpfs", "/tmp", "--entrypoint", "python",
              image, "-c", code)


def check_image_contents() -> None:
    """The service imports, carries no CUDA and no training code; the app carries no torch."""
    report = run_in_image(IMAGES["backend"], (
        "import json, os, importlib.metadata as m, torch, torchvision, backend.main\n"
        "names = sorted(d.metadata['Name'] for d in m.distributions())\n"
        "nvidia = [n for n in names if 'nvidia' in n.lower()]\n"
        "print(json.dumps({'cuda': torch.version.cuda, 'nvidia': nvidia,"
        " 'torch': torch.__version__,"
        " 'trainer': sorted(os.listdir('/app/trainer'))}))"))
    info = json.loads(report.splitlines()[-1])
    log.info("backend image: torch %s, trainer/ holds %s", info["torch"], info["trainer"])
    if info["cuda"] is not None or info["nvidia"]:
        message = (f"the backend image carries CUDA torch {info['torch']} and "
                   f"{len(info['nvidia'])} nvidia packages")
        expect(os.environ.get("CHECK_ALLOW_CUDA_TORCH") == "1", message)
        WARNINGS.append(message + " (allowed by CHECK_ALLOW_CUDA_TORCH=1)")
        log.warning("%s", WARNINGS[-1])
    expect(set(info["trainer"]) - {"__pycache__"} == {"__init__.py", "model"},
           f"the backend image holds more than trainer/model: {info['trainer']}")
    found = run_in_image(IMAGES["app"],
                         "import importlib.util as u; print(u.find_spec('torch') is not None)")
    expect(found.splitlines()[-1] == "False", "the app image carries torch")


def seconds_since_start(container: str) -> float:
    """Seconds since the container's process started (creating a container is not counted)."""
    from datetime import datetime, timezone

    started = sh("docker", "inspect", "-f", "{{.State.StartedAt}}", container)
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", started).replace("Z", "+00:00")
    return (datetime.now(timezone.utc) - datetime.fromisoformat(stamp)).total_seconds()


def wait_healthy(stack: Stack, services: list[str]) -> None:
    start = time.monotonic()
    deadline = start + HEALTH_TIMEOUT_S
    pending = list(services)
    while pending:
        for service in list(pending):
            state = sh("docker", "inspect", "-f", "{{.State.Status}} {{.State.Health.Status}}",
                       stack.container(service))
            if state == "running healthy":
                log.info("%s healthy %.1f s after `up`, %.1f s after its process started", service,
                         time.monotonic() - start, seconds_since_start(stack.container(service)))
                pending.remove(service)
            elif state.startswith(("exited", "dead", "restarting")) or state.endswith("unhealthy"):
                logs = stack.compose("logs", "--tail", "60", service)
                raise CheckFailed(f"{service} is {state}:\n{logs}")
        expect(time.monotonic() < deadline, f"not healthy within {HEALTH_TIMEOUT_S} s: {pending}")
        time.sleep(1)


def photo(path: Path) -> Path:
    """A real photograph (scikit-image's astronaut, shipped in its wheel) as a JPEG."""
    import skimage.data

    Image.fromarray(skimage.data.astronaut()).save(path, quality=90)
    return path


def reference_masks(attentions: np.ndarray, threshold: float) -> np.ndarray:
    """The DINO authors' rule: per head, keep the top patches holding ``threshold`` of the mass."""
    heads = attentions.reshape(attentions.shape[0], -1)
    order = np.argsort(heads, axis=1)
    ranked = np.take_along_axis(heads, order, axis=1)
    ranked = ranked / ranked.sum(axis=1, keepdims=True)
    keep_ranked = np.cumsum(ranked, axis=1) > (1 - threshold)
    keep = np.empty_like(keep_ranked)
    np.put_along_axis(keep, order, keep_ranked, axis=1)
    return keep.reshape(attentions.shape)


def post_attention(base_url: str, image: Path, **fields: str) -> dict:
    import httpx

    with image.open("rb") as f:
        reply = httpx.post(f"{base_url}/attention", files={"image": (image.name, f, "image/jpeg")},
                           data={"threshold": "0.6", "overlays": "false", **fields}, timeout=300)
    expect(reply.status_code == 200, f"POST /attention: {reply.status_code} {reply.text[:500]}")
    return reply.json()


def check_masks(result: dict, threshold: float = 0.6) -> None:
    attentions = np.asarray(result["attentions"], dtype=np.float64)
    masks = np.asarray(result["masks"])
    heads, (gh, gw) = result["num_heads"], result["grid"]
    expect(attentions.shape == masks.shape == (heads, gh, gw),
           f"shapes {attentions.shape} {masks.shape}, expected {(heads, gh, gw)}")
    expect(set(np.unique(masks).tolist()) <= {0, 1}, "masks are not 0/1")
    coverage = np.asarray(result["coverage"])
    expect(np.allclose(coverage, masks.mean(axis=(1, 2)), atol=1e-6), "coverage != mask mean")
    agreement = (masks == reference_masks(attentions, threshold)).mean(axis=(1, 2))
    expect(bool((agreement >= 0.99).all()), f"masks differ from the reference rule: {agreement}")
    log.info("%s: %d heads on a %dx%d grid, coverage %s, agreement with the reference %s",
             result["model"], heads, gh, gw, np.round(coverage, 3).tolist(),
             np.round(agreement, 4).tolist())


def browse(app_url: str, image: Path, screenshot: Path) -> None:
    """Open the app, upload the photo, wait for the per-head gallery, keep a screenshot."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM,
                                     args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1600})
            page.set_default_timeout(120_000)
            page.goto(app_url)
            page.get_by_text("Connected to").wait_for()
            page.locator("#image-input input[type=file]").set_input_files(str(image))
            page.wait_for_function(GALLERY_READY)
            captions = page.locator("#heads .caption-label").all_inner_texts()
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    expect(captions == [f"head {i}" for i in range(len(captions))], f"gallery captions {captions}")
    log.info("the app shows %d heads; screenshot %s", len(captions), screenshot)


def check_hardening(stack: Stack, services: list[str]) -> None:
    """Each container runs as uid 10001 on a read-only root filesystem, /tmp writable."""
    for service in services:
        cid = stack.container(service)
        fmt = "{{.Config.User}} {{.HostConfig.ReadonlyRootfs}}"
        user, read_only = sh("docker", "inspect", "-f", fmt, cid).split()
        expect(user == USER and read_only == "true",
               f"{service}: user {user}, read-only root {read_only}")
        ids = sh("docker", "exec", cid, "id", "-u")
        expect(ids == USER.split(":")[0], f"{service} runs as uid {ids}")
        denied = subprocess.run(["docker", "exec", cid, "touch", "/app/probe"],
                                capture_output=True, text=True)
        expect(denied.returncode != 0 and "Read-only" in denied.stderr,
               f"{service}: the root filesystem is writable ({denied.stderr.strip()})")
        sh("docker", "exec", cid, "touch", "/tmp/probe")
        log.info("%s: uid %s, read-only root filesystem, writable /tmp", service, ids)


def training_images(folder: Path, count: int = 12) -> Path:
    """A dozen photos (crops of scikit-image's sample pictures) readable by the container's user."""
    import skimage.data

    folder.mkdir(parents=True, exist_ok=True)
    names = ("astronaut", "chelsea", "coffee", "rocket")
    sources = [getattr(skimage.data, name)() for name in names]
    for i in range(count):
        img = Image.fromarray(sources[i % len(sources)]).convert("RGB")
        w, h = img.size
        box = (i * 7 % (w // 4), i * 11 % (h // 4), w - i * 5 % (w // 4), h - i * 3 % (h // 4))
        img.crop(box).save(folder / f"img_{i:02d}.jpg", quality=90)
    folder.chmod(0o755)
    for path in folder.iterdir():
        path.chmod(0o644)
    return folder


def build(stack: Stack) -> None:
    if os.environ.get("CHECK_SKIP_BUILD") == "1":
        log.info("CHECK_SKIP_BUILD=1: using the images already built")
        return
    for service in ("backend", "app", "trainer-cpu"):
        with step(f"build {service}"):
            stack.compose("build", service, capture=False)


def serve_and_use(stack: Stack, image: Path) -> None:
    with step("up -d backend app (cold start to healthy)"):
        stack.compose("up", "-d", "backend", "app", capture=False)
        wait_healthy(stack, ["backend", "app"])
    with step("POST /attention through the published port"):
        check_masks(post_attention(stack.url("backend"), image, image_size="480"))
    with step("browser: upload a photo, per-head gallery, screenshot"):
        browse(stack.url("app"), image, OUT / "app.png")
    with step("non-root user, read-only root filesystem"):
        check_hardening(stack, ["backend", "app"])


def train_and_serve(stack: Stack, image: Path) -> None:
    """trainer-cpu writes teacher_backbone.safetensors into dino-runs; backend-trained serves it."""
    training_images(OUT / "train-images")
    # the first stack is checked: remove it, so that peak disk use (a copying storage driver
    # copies each image per container) and memory stay low
    stack.compose("rm", "--stop", "--force", "backend", "app", capture=False)
    with step("train-cpu: a tiny ViT for a few steps, then serve it"):
        stack.compose("up", "-d", "backend-trained", capture=False)
        (OUT / "trainer-cpu.log").write_text(stack.compose("logs", "--no-color", "trainer-cpu"))
        wait_healthy(stack, ["backend-trained"])
        with urllib.request.urlopen(f"{stack.url('trained')}/models", timeout=30) as reply:
            models = json.load(reply)
        expect(models["default"] == "teacher_backbone", f"default model {models['default']}")
        result = post_attention(stack.url("trained"), image, image_size="224")
        expect(result["model"] == "teacher_backbone" and result["arch"] == "vit_tiny",
               f"served {result['model']} ({result['arch']})")
        check_masks(result)
    with step("non-root user, read-only root filesystem (trained backend)"):
        check_hardening(stack, ["backend-trained"])


def report(failed: str | None) -> None:
    print("\nstep times:")
    for name, seconds in TIMINGS:
        print(f"  {seconds:8.1f} s  {name}")
    print("image sizes:")
    for image in IMAGES.values():
        try:
            print(f"  {image_size_mb(image):8.0f} MB  {image}")
        except CheckFailed:
            print(f"  {'missing':>8}     {image}")
    for warning in WARNINGS:
        print(f"warning: {warning}")
    print(f"compose-check {'FAILED: ' + failed if failed else 'passed'}")


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    OUT.mkdir(parents=True, exist_ok=True)
    stack = Stack()
    log.info("project %s, compose %s, ports %s", stack.project, shlex.join(stack.base[:-4]),
             stack.ports)
    image = photo(OUT / "astronaut.jpg")
    failed = None
    try:
        build(stack)
        with step("image contents: no CUDA in the service, no torch in the app"):
            check_image_contents()
        serve_and_use(stack, image)
        train_and_serve(stack, image)
    except (CheckFailed, subprocess.TimeoutExpired) as exc:
        failed = str(exc)
        log.error("%s", exc)
        (OUT / "compose.log").write_text(stack.compose("logs", "--no-color", check=False))
    finally:
        with step("down -v"):
            stack.compose("down", "-v", "--remove-orphans", check=False, capture=False)
    report(failed)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
