"""Faults and hostile inputs against a real uvicorn process of the service, with figures.

    python -m benchmarks.faults            # the full run (about two minutes on 2 CPU cores)
    python -m benchmarks.faults --quick    # a smoke run of every scenario, smaller sizes

Scenarios (the hardening issue's items):

* **stage faults** (1): an ffconcat list naming another job's input (415 before a job exists),
  a clip whose frames change size after the first (the job fails naming the frame), then a good
  job, which must run on the freed worker;
* **growing frames and cancellation** (3): frames growing past ``DINO_VIDEO_MAX_PIXELS`` fail the
  job; a long job is cancelled (DELETE) and the next job must start within one batch;
* **job flood** (4): one browser session runs many tiny jobs one after another, more than the
  store holds; another session must still get 202;
* **decode memory** (7): concurrent small PNGs of 39.7 megapixels each;
* **vanishing files** (11): checkpoints written and deleted while ``/models`` and ``/attention``
  are called;
* **bad metadata** (12): files whose mean/std are wrong are listed unavailable; their requests
  get 503, and every reply is strict JSON (no NaN).

Printed: faults tried, 5xx replies, the server's peak and settled RSS (``/proc``), the time a
cancelled job took to free the worker and the time a faulty job took to fail.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import httpx
import numpy as np
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from benchmarks.serving import uvicorn_process, write_tiny_checkpoint

TERMINAL = ("done", "failed", "cancelled")
BAD_META = {
    "short_mean": {"mean": "[0.5, 0.5]"},
    "text_std": {"std": '["a", "b", "c"]'},
    "zero_std": {"std": "[0.0, 0.2, 0.2]"},
}


@dataclass
class Figures:
    """What the run measured."""

    faults: int = 0
    statuses: Counter = field(default_factory=Counter)
    error_codes: Counter = field(default_factory=Counter)  # the ``code`` of each 5xx reply
    stalled_job_end_s: float = float("nan")  # DELETE of a running job -> next job running
    faulty_job_end_s: float = float("nan")  # submit of a clip failing at decode -> failed
    peak_rss_mb: float = 0.0
    settled_rss_mb: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)

    @property
    def server_errors(self) -> int:
        """5xx replies other than the 503s the API declares (busy, model unavailable)."""
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)


class Probe:
    """An HTTP client that counts every status it gets; ``fault`` marks a hostile request."""

    def __init__(self, url: str, figures: Figures) -> None:
        self.http = httpx.Client(base_url=url, timeout=120)
        self.figures = figures

    def call(self, method: str, path: str, fault: bool = False, **kw: Any) -> httpx.Response:
        r = self.http.request(method, path, **kw)
        self.figures.statuses[r.status_code] += 1
        self.figures.faults += int(fault)
        body = json.loads(r.text, parse_constant=_no_constant) if _is_json(r) else None
        if r.status_code >= 500:
            code = body.get("code") if isinstance(body, dict) else None
            self.figures.error_codes[f"{r.status_code} {code}"] += 1
        return r

    def submit(self, clip: bytes, name: str, session: str, fault: bool = False, **p: Any):
        data = {"model": "tiny", "image_size": "48", **{k: str(v) for k, v in p.items()}}
        files = {"video": (name, clip, "video/mp4")}
        headers = {"X-Dino-Client": session}
        return self.call("POST", "/attention/video", fault, files=files, data=data, headers=headers)

    def wait(self, job: str, states: tuple[str, ...] = TERMINAL, limit_s: float = 120) -> dict:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            body = self.call("GET", f"/jobs/{job}").json()
            if body["state"] in states:
                return body
            time.sleep(0.05)
        raise TimeoutError(f"job {job} did not reach {states} in {limit_s} s")


def _is_json(r: httpx.Response) -> bool:
    return r.headers.get("content-type", "").startswith("application/json")


def _no_constant(word: str) -> None:
    raise ValueError(f"the reply holds {word}, which is not JSON")


# -- inputs ------------------------------------------------------------------------------
def clip_bytes(frames: int, width: int = 64, height: int = 48, fps: int = 12) -> bytes:
    """A small H.264 MP4 of a moving gradient."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(frames):
            rgb = np.stack([(xx * 4 + i * 9) % 256, (yy * 5) % 256, (xx + yy) % 256], -1)
            frame = av.VideoFrame.from_ndarray(rgb.astype(np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return buf.getvalue()


def growing_avi(sizes: list[tuple[int, int]]) -> bytes:
    """An MJPEG AVI whose frames have the given sizes (each frame its own JPEG)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="avi") as container:
        stream = container.add_stream("mjpeg", rate=10)
        stream.width, stream.height = sizes[0]
        stream.pix_fmt = "yuvj420p"
        for i, (w, h) in enumerate(sizes):
            jpeg = io.BytesIO()
            Image.new("RGB", (w, h), (40 * (i % 5), 80, 120)).save(jpeg, format="JPEG")
            packet = av.Packet(jpeg.getvalue())
            packet.stream, packet.pts, packet.dts = stream, i, i
            packet.time_base = Fraction(1, 10)
            container.mux(packet)
    return buf.getvalue()


def zero_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def write_bad_metadata(folder: Path, good: Path) -> None:
    with safe_open(str(good), framework="pt") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(str(good))
    for name, change in BAD_META.items():
        save_file(tensors, str(folder / f"{name}.safetensors"), metadata={**meta, **change})


# -- the server's memory -------------------------------------------------------------------
def server_pid(port: int) -> int | None:
    """The pid of the uvicorn process serving ``port`` (a child of this process)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"uvicorn" in b" ".join(cmd) and str(port).encode() in cmd:
            return int(entry.name)
    return None


def rss_mb(pid: int | None, key: str = "VmRSS") -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of ``pid`` in MB."""
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- scenarios -----------------------------------------------------------------------------
def stage_faults(p: Probe, f: Figures, clip: bytes) -> None:
    first = p.submit(clip, "ok.mp4", "a").json()["job"]
    p.wait(first)
    playlist = f"ffconcat version 1.0\nfile ../{first}/input.mp4\n".encode()
    f.checks["ffconcat refused 415"] = p.submit(playlist, "x.mp4", "a", True).status_code == 415
    start = time.monotonic()
    bad = p.submit(growing_avi([(32, 24)] * 3 + [(48, 24)] * 3), "grow.avi", "a", True, fps=10)
    body = p.wait(bad.json()["job"])
    f.faulty_job_end_s = time.monotonic() - start
    f.checks["size change fails the job"] = body["state"] == "failed" and "frame 3" in body["error"]
    after = p.wait(p.submit(clip, "ok.mp4", "a").json()["job"])
    f.checks["next job done after a fault"] = after["state"] == "done"


def growing_and_cancel(p: Probe, f: Figures, long_clip: bytes, side: int) -> None:
    big = growing_avi([(32, 24)] * 2 + [(side, side)] + [(32, 24)])
    body = p.wait(p.submit(big, "big.avi", "b", True, fps=10).json()["job"])
    f.checks["frame past the pixel limit fails"] = body["state"] == "failed" and (
        "frame 2" in (body["error"] or "")
    )
    job = p.submit(long_clip, "long.mp4", "b", image_size=320).json()["job"]
    p.wait(job, ("running",))
    while p.call("GET", f"/jobs/{job}").json()["frames_done"] == 0:
        time.sleep(0.05)
    sent = time.monotonic()
    p.call("DELETE", f"/jobs/{job}", True)
    nxt = p.submit(clip_bytes(4), "ok.mp4", "c").json()["job"]
    p.wait(nxt, ("running", "done"))
    f.stalled_job_end_s = time.monotonic() - sent
    f.checks["cancelled job frees the worker"] = p.wait(nxt)["state"] == "done"


def job_flood(p: Probe, f: Figures, clip: bytes, jobs: int) -> None:
    for _ in range(jobs):
        r = p.submit(clip, "ok.mp4", "flood", True, fps=4)
        if r.status_code == 202:
            p.wait(r.json()["job"])
    other = p.submit(clip, "ok.mp4", "other", fps=4)
    f.checks[f"another session gets in after {jobs} jobs"] = other.status_code == 202
    if other.status_code == 202:
        p.wait(other.json()["job"])


def decode_memory(p: Probe, f: Figures, pid: int | None, count: int, side: int) -> None:
    png = zero_png(side)

    def one(_: int) -> int:
        files = {"image": ("bomb.png", png, "image/png")}
        return p.call(
            "POST", "/attention", True, files=files, data={"model": "tiny", "image_size": "64"}
        ).status_code

    with ThreadPoolExecutor(count) as pool:
        codes = list(pool.map(one, range(count)))
    f.checks["decodes answered 200 or 503"] = set(codes) <= {200, 503}
    time.sleep(3)
    f.settled_rss_mb = rss_mb(pid)


def vanishing_files(p: Probe, f: Figures, folder: Path, good: Path, seconds: float) -> None:
    stop = threading.Event()
    data = good.read_bytes()

    def churn() -> None:
        i = 0
        while not stop.is_set():
            path = folder / f"churn{i % 4}.safetensors"
            path.write_bytes(data)
            path.unlink(missing_ok=True)
            i += 1

    worker = threading.Thread(target=churn, daemon=True)
    worker.start()
    png = {"image": ("a.png", _small_png(), "image/png")}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        p.call("GET", "/models", True)
        p.call("POST", "/attention", True, files=png, data={"model": "tiny", "image_size": "32"})
    stop.set()
    worker.join()


def bad_metadata(p: Probe, f: Figures) -> None:
    models = {m["id"]: m for m in p.call("GET", "/models").json()["models"]}
    f.checks["bad metadata listed unavailable"] = all(
        not models[name]["available"] and models[name]["error"] for name in BAD_META
    )
    png = {"image": ("a.png", _small_png(), "image/png")}
    codes = [
        p.call("POST", "/attention", True, files=png, data={"model": n, "image_size": "32"})
        for n in BAD_META
    ]
    f.checks["bad metadata requests 503"] = all(r.status_code == 503 for r in codes)


def _small_png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


# -- the run -------------------------------------------------------------------------------
def service_env(root: Path) -> dict[str, str]:
    ckpt, cache = root / "checkpoints", root / "cache"
    ckpt.mkdir(parents=True)
    cache.mkdir()
    good, _ = write_tiny_checkpoint(ckpt, "tiny")
    write_bad_metadata(ckpt, good)
    return {
        "DINO_CHECKPOINT_DIR": str(ckpt),
        "DINO_CACHE_DIR": str(cache),
        "DINO_ALLOW_DOWNLOADS": "false",
        "DINO_DEVICE": "cpu",
        "DINO_DEFAULT_MODEL": "tiny",
        "DINO_VIDEO_MAX_PIXELS": "1000000",
        "DINO_VIDEO_MAX_JOBS": "30",
        "DINO_VIDEO_BATCH": "4",
        "DINO_QUEUE_TIMEOUT_S": "5",
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }


def run(quick: bool) -> Figures:
    """Every scenario against one fresh service; the figures."""
    f = Figures()
    with tempfile.TemporaryDirectory() as tmp:
        env = service_env(Path(tmp))
        with uvicorn_process(env) as url:
            pid = server_pid(int(url.rsplit(":", 1)[1]))
            p = Probe(url, f)
            clip = clip_bytes(4)
            stage_faults(p, f, clip)
            growing_and_cancel(p, f, clip_bytes(60 if quick else 240), 1200)
            job_flood(p, f, clip, 12 if quick else 100)
            decode_memory(p, f, pid, 4 if quick else 16, 2000 if quick else 6300)
            vanishing_files(
                p, f, Path(env["DINO_CHECKPOINT_DIR"]), good_file(env), 2 if quick else 20
            )
            bad_metadata(p, f)
            f.peak_rss_mb = rss_mb(pid, "VmHWM")
    return f


def good_file(env: dict[str, str]) -> Path:
    return Path(env["DINO_CHECKPOINT_DIR"]) / "tiny.safetensors"


def report(f: Figures) -> str:
    lines = [
        f"faults tried: {f.faults}",
        f"replies: {dict(sorted(f.statuses.items()))}",
        f"5xx replies: {sum(f.error_codes.values())} ({dict(f.error_codes)}); "
        f"other than a declared 503: {f.server_errors}",
        f"server peak RSS: {f.peak_rss_mb:.0f} MB; 3 s after the decodes: "
        f"{f.settled_rss_mb:.0f} MB",
        f"cancelled job freed the worker in {f.stalled_job_end_s:.2f} s",
        f"a job failing at decode ended in {f.faulty_job_end_s:.2f} s",
        *(f"{'ok' if ok else 'FAILED'}: {name}" for name, ok in f.checks.items()),
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Figures:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run with smaller sizes")
    args = parser.parse_args(argv)
    figures = run(args.quick)
    sys.stdout.write(report(figures))
    return figures


if __name__ == "__main__":
    main()
