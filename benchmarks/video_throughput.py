"""Video attention throughput: the service's video job against the authors' per-frame loop.

    python -m benchmarks.video_throughput         # ViT-S/16 and ViT-S/8, short side 480, fp32
    python -m benchmarks.video_throughput --frames 16 --archs vit_s16
    python -m benchmarks.video_throughput --archs vit_s8 --precision fp32,bf16,int8 --clip CLIP
    python -m benchmarks.video_throughput --tiny  # a seconds-long smoke run

One clip (``--clip``, or a generated 640x480 one: a textured square moving over a textured
background), random weights (timing does not depend on them), the same torch threads on both
sides. Per architecture:

* **authors' loop** (as their ``video_generation.py``): every frame extracted to a JPEG; then per
  frame: read the JPEG, ToTensor, Resize(480), Normalize, ``get_last_selfattention`` with explicit
  attention in every block and the full (1+N) x (1+N) last-block weights, the threshold masks,
  nearest upsampling, and ``plt.imsave`` of the inferno mean map as JPEG; then the JPEGs read back
  and written as an MP4 (MPEG-4 part 2, like OpenCV's MP4V). Stages: decode, model, encode.
* **service, stage by stage**: decode = ``sample_frames`` + ``prepare``; model =
  ``AttentionService.batch_cls_attention`` of a real service on batches of ``DINO_VIDEO_BATCH``
  frames; encode = the ``mean`` render + H.264 MP4 writes (result
  and source videos).
* **service, end to end**: ``POST /attention/video`` on the real app (TestClient), polling
  ``GET /jobs/{id}`` until done: the three stages overlap in their threads.

The service runs once per ``--precision`` mode (the job's ``precision`` field end to end); the
authors' loop is fp32. Printed: frames/s of each stage and end to end, the end-to-end speed-up
over the authors' loop and, per mode, the share of mask cells equal to fp32's and the largest
difference of a map value from fp32's (same frames, the stage-by-stage run).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

from backend.analysis.images import prepare
from backend.video.io import Mp4Writer, sample_frames
from backend.video.render import render_frame
from trainer.model.checkpoint import export_backbone_safetensors
from trainer.model.vit import DinoViT, build_vit

PRECISIONS = ("fp32", "bf16", "int8", "auto")
ARCHS = {"vit_s16": ("vit_small", 16), "vit_s8": ("vit_small", 8)}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Result:
    arch: str
    path: str
    frames: int
    decode_fps: float
    model_fps: float
    encode_fps: float
    total_fps: float
    speedup: float = 0.0
    precision: str = "fp32"
    mask_agreement: float | None = None  # share of mask cells equal to the fp32 run's
    max_map_diff: float | None = None  # largest |map - fp32 map|


def fps(frames: int, seconds: float) -> float:
    return frames / max(seconds, 1e-9)


def build_model(name: str, patch: int, tiny: bool) -> DinoViT:
    torch.manual_seed(0)
    if tiny:
        return (
            build_vit(patch_size=patch, embed_dim=64, depth=2, num_heads=1)
            .eval()
            .requires_grad_(False)
        )
    return build_vit(name, patch).eval().requires_grad_(False)


def authors_model(
    model: DinoViT, img: Image.Image, patch: int, short_side: int, threshold: float
) -> np.ndarray:
    """One frame of the authors' ``_inference``: resize, full attention, masks, inferno mean."""
    from torchvision import transforms as T

    x = T.Compose([T.ToTensor(), T.Resize(short_side), T.Normalize(MEAN, STD)])(img)
    h, w = x.shape[1] - x.shape[1] % patch, x.shape[2] - x.shape[2] % patch
    x = x[:, :h, :w].unsqueeze(0)
    gh, gw = h // patch, w // patch
    attn = model.get_last_selfattention(x)  # explicit attention in every block (set by the caller)
    heads = attn.shape[1]
    attn = attn[0, :, 0, 1:].reshape(heads, -1)
    val, idx = torch.sort(attn)
    val = val / val.sum(dim=1, keepdim=True)
    keep = torch.cumsum(val, dim=1) > (1 - threshold)
    back = torch.argsort(idx)
    for head in range(heads):
        keep[head] = keep[head][back[head]]
    masks = torch.nn.functional.interpolate(
        keep.reshape(1, heads, gh, gw).float(), scale_factor=patch, mode="nearest"
    )[0].numpy()
    maps = torch.nn.functional.interpolate(
        attn.reshape(1, heads, gh, gw), scale_factor=patch, mode="nearest"
    )[0].numpy()
    del masks  # computed as the authors do; their script does not save them
    return sum(maps[i] / heads for i in range(heads))


def authors_loop(arch: str, model: DinoViT, patch: int, clip: Path, work: Path, args) -> Result:
    """The authors' three steps, each timed (frames -> JPEGs -> attention JPEGs -> MP4)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames_dir, attn_dir = work / "frames", work / "attention"
    frames_dir.mkdir()
    attn_dir.mkdir()
    t0 = time.perf_counter()
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            frame.to_image().save(frames_dir / f"frame-{i:04}.jpg", quality=95)
    t1 = time.perf_counter()
    model.set_fused_attention(False)
    try:
        for path in sorted(glob.glob(str(frames_dir / "*.jpg"))):
            with open(path, "rb") as fh:
                img = Image.open(fh).convert("RGB")
            mean = authors_model(model, img, patch, args.short_side, args.threshold)
            name = str(attn_dir / f"attn-{Path(path).name}")
            plt.imsave(fname=name, arr=mean, cmap="inferno", format="jpg")
    finally:
        model.set_fused_attention(True)
    t2 = time.perf_counter()
    n = authors_encode(attn_dir, work / "video.mp4")
    t3 = time.perf_counter()
    stages = (fps(n, t1 - t0), fps(n, t2 - t1), fps(n, t3 - t2), fps(n, t3 - t0))
    return Result(arch, "authors' per-frame loop", n, *stages)


def authors_encode(attn_dir: Path, out: Path) -> int:
    """Read every attention JPEG into memory, then write them as MPEG-4 part 2 (OpenCV's MP4V)."""
    images = [
        np.asarray(Image.open(p).convert("RGB"))
        for p in sorted(glob.glob(str(attn_dir / "attn-*.jpg")))
    ]
    with av.open(str(out), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=Fraction(25))
        stream.height, stream.width = images[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for arr in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")))
        container.mux(stream.encode(None))
    return len(images)


def service_stages(
    arch: str, model: DinoViT, patch: int, clip: Path, work: Path, args, precision: str = "fp32"
) -> tuple[Result, list]:
    """The service's decode, model and encode steps, each timed alone; the result and maps."""
    from backend.analysis.inference import derive_maps

    t0 = time.perf_counter()
    frames = [
        (img, prepare(img, args.short_side, "keep_aspect", patch, MEAN, STD))
        for _, img in sample_frames(clip, 25.0, 10**6)
    ]
    t1 = time.perf_counter()
    service, loaded = loaded_service(arch, model, work / "stages", args)
    maps = []
    for i in range(0, len(frames), args.batch):
        tensor = torch.cat([p.tensor for _, p in frames[i : i + args.batch]])
        for attn in service.batch_cls_attention(loaded, tensor, -1, precision=precision):
            maps.append(derive_maps(attn, args.threshold))
    t2 = time.perf_counter()
    with (
        Mp4Writer(work / "result.mp4", 25.0) as result,
        Mp4Writer(work / "source.mp4", 25.0) as source,
    ):
        for (img, prepared), m in zip(frames, maps, strict=True):
            result.write(
                render_frame("mean", np.asarray(prepared.image), m.attentions, m.masks, patch)
            )
            source.write(np.asarray(img))
    t3 = time.perf_counter()
    n = len(frames)
    stages = (fps(n, t1 - t0), fps(n, t2 - t1), fps(n, t3 - t2), fps(n, t3 - t0))
    path = "service stages (one at a time)"
    return Result(arch, path, n, *stages, precision=precision), maps


def agreement(result: Result, maps: list, reference: list) -> None:
    """Fill ``result``'s mask agreement and largest map difference against the fp32 maps."""
    pairs = list(zip(maps, reference, strict=True))
    equal = [float((m.masks == r.masks).mean()) for m, r in pairs]
    diffs = [float(np.abs(m.attentions - r.attentions).max()) for m, r in pairs]
    result.mask_agreement, result.max_map_diff = float(np.mean(equal)), max(diffs)


def service_settings(arch: str, model: DinoViT, work: Path, args):
    """Settings of a real service whose checkpoint folder holds ``model`` as ``arch``."""
    from backend.settings import Settings

    ckpt = work / "checkpoints"
    ckpt.mkdir(parents=True, exist_ok=True)
    export_backbone_safetensors(
        model, ckpt / f"{arch}.safetensors", arch=arch, epoch=None, trained=False
    )
    return Settings(
        checkpoint_dir=ckpt,
        cache_dir=work / "cache",
        allow_downloads=False,
        device="cpu",
        default_model=arch,
        video_batch=args.batch,
        max_concurrency=1,
        queue_timeout_s=3600,
    )


def loaded_service(arch: str, model: DinoViT, work: Path, args):
    """A real ``AttentionService`` and its loaded ``arch`` model (no HTTP)."""
    from backend.analysis.service import AttentionService

    service = AttentionService(service_settings(arch, model, work, args))
    return service, service.registry.get(arch)


def service_end_to_end(
    arch: str, model: DinoViT, clip: Path, work: Path, args, precision: str = "fp32"
) -> Result:
    """``POST /attention/video`` on the real app; frames/s from submission to ``state == done``."""
    from fastapi.testclient import TestClient

    from backend.main import create_app

    settings = service_settings(arch, model, work, args)
    form = {"image_size": args.short_side, "threshold": args.threshold, "precision": precision}
    with TestClient(create_app(settings)) as client, open(clip, "rb") as fh:
        data = fh.read()
        t0 = time.perf_counter()
        job = client.post(
            "/attention/video",
            files={"video": ("clip.mp4", data, "video/mp4")},
            data={k: str(v) for k, v in form.items()},
        )
        if job.status_code != 202:
            raise RuntimeError(f"the video job was refused: {job.text}")
        job = job.json()["job"]
        while (status := client.get(f"/jobs/{job}").json())["state"] in ("queued", "running"):
            time.sleep(0.02)
        seconds = time.perf_counter() - t0
        summary = client.get(f"/jobs/{job}/result", params={"format": "json"}).json()
    if status["state"] != "done":
        raise RuntimeError(f"the video job ended {status['state']}: {status['error']}")
    n = int(status["frames_done"])
    path = "service end to end (overlapped)"
    ran = summary["request"]["precision"]  # the mode the job ran (auto resolved)
    return Result(arch, path, n, 0.0, 0.0, 0.0, fps(n, seconds), precision=ran)


def run(args: argparse.Namespace) -> list[Result]:
    if args.threads:
        torch.set_num_threads(args.threads)
    results: list[Result] = []
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"clip {args.width}x{args.height}, "
        f"{args.frames} frames, short side {args.short_side}, batch {args.batch}, "
        f"service precision {', '.join(args.precision)}",
        flush=True,
    )
    for arch in args.archs:
        name, patch = ARCHS[arch]
        model = build_model(name, patch, args.tiny)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            clip = args.clip or work / "clip.mp4"
            if args.clip is None:
                write_clip(clip, args.frames, args.width, args.height)
            results += arch_runs(arch, model, patch, clip, work, args)
        base = next(r for r in results if r.arch == arch and r.path.startswith("authors"))
        for r in results:
            if r.arch == arch:
                r.speedup = r.total_fps / base.total_fps
    return results


def arch_runs(arch: str, model: DinoViT, patch: int, clip: Path, work: Path, args) -> list:
    """The authors' loop, then per precision the service's stages and its end-to-end job."""

    def folder(name: str) -> Path:
        (work / name).mkdir()
        return work / name

    out = [authors_loop(arch, model, patch, clip, folder("authors"), args)]
    print_result(out[-1])
    reference = None
    for mode in args.precision:
        stages, maps = service_stages(
            arch, model, patch, clip, folder(f"{mode}-stages"), args, mode
        )
        reference = maps if mode == "fp32" else reference
        if reference is not None:
            agreement(stages, maps, reference)
        out += [stages, service_end_to_end(arch, model, clip, folder(f"{mode}-job"), args, mode)]
        print_result(out[-2])
        print_result(out[-1])
    return out


def write_clip(path: Path, frames: int, width: int, height: int) -> None:
    """The benchmark clip: the tests' moving textured square, H.264 at 25 frames/s."""
    from tests.video_clips import write_clip as write

    write(path, frames, width, height, fps=25)


def print_result(r: Result) -> None:
    stages = (
        f"decode {r.decode_fps:8.3g}  model {r.model_fps:8.3g}  encode {r.encode_fps:8.3g}  "
        if r.decode_fps
        else " " * 51
    )
    speed = f"  x{r.speedup:4.2f}" if r.speedup else ""
    agree = (
        f"  masks = fp32 {100 * r.mask_agreement:6.2f}%  max map diff {r.max_map_diff:.1e}"
        if r.mask_agreement is not None
        else ""
    )
    print(
        f"{r.arch:8s} {r.precision:4s} {r.path:34s} n={r.frames:<4d} {stages}"
        f"total {r.total_fps:8.3g} frames/s{speed}{agree}",
        flush=True,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--archs", default="vit_s16,vit_s8", help=f"comma list of {', '.join(ARCHS)}")
    p.add_argument("--frames", type=int, default=24, help="frames in the generated clip")
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument(
        "--short-side", type=int, default=480, help="image_size: the short side the model sees"
    )
    p.add_argument(
        "--batch", type=int, default=8, help="frames per inference batch (DINO_VIDEO_BATCH)"
    )
    p.add_argument("--threshold", type=float, default=0.6)
    p.add_argument(
        "--precision",
        default="fp32",
        help="comma list of the service's modes: fp32, bf16, int8, auto (fp32 runs first: the "
        "reference of the mask agreement)",
    )
    p.add_argument("--clip", type=Path, help="a video file to use instead of the generated clip")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--tiny", action="store_true", help="tiny models on a 64x48 clip (smoke test)")
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    args.archs = [a.strip() for a in args.archs.split(",") if a.strip()]
    unknown = [a for a in args.archs if a not in ARCHS]
    if unknown:
        p.error(f"unknown arch {unknown[0]!r}; choose from {', '.join(ARCHS)}")
    modes = [m.strip() for m in args.precision.split(",") if m.strip()]
    bad = [m for m in modes if m not in PRECISIONS] or ([] if modes else [""])
    if bad:
        p.error(f"unknown precision {bad[0]!r}; choose from {', '.join(PRECISIONS)}")
    args.precision = sorted(dict.fromkeys(modes), key=lambda m: m != "fp32")  # fp32 first
    if args.clip is not None and not args.clip.is_file():
        p.error(f"--clip {args.clip}: no such file")
    if args.tiny:
        args.width, args.height, args.short_side, args.frames = 64, 48, 48, min(args.frames, 12)
    return args


def main(argv: list[str] | None = None) -> list[Result]:
    args = parse_args(argv)
    results = run(args)
    print("\nsummary (end-to-end speed-up over the authors' per-frame loop):")
    for r in results:
        print_result(r)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))
    return results


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    main()
