"""DAVIS-2017 semi-supervised video object segmentation by label propagation (DINO, Table 5).

The first frame's annotation is propagated through the video with frozen patch features
(:mod:`trainer.eval.label_propagation`), with the authors' protocol: frames resized to a short
side of 480 (long side floored to a multiple of 64), their normalisation (mean 0.485/0.456/0.406,
std 0.228/0.224/0.225), last-block patch tokens after the final norm, L2-normalised; context =
the first frame and the 7 previous predictions; window radius 12; top-5; temperature 0.1.
Every frame's features are computed once, in batches. Scores follow the DAVIS definitions
(:mod:`trainer.eval.davis_metrics`).

    python -m trainer.eval.davis --checkpoint CKPT --davis ROOT --output_dir OUT

``ROOT`` holds ``JPEGImages/480p/<seq>/*.jpg`` and ``Annotations/480p/<seq>/*.png`` (indexed).
Writes ``OUT/<seq>/<frame>.png`` (indexed, with the first annotation's palette) and
``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from trainer.eval.backbone import load_eval_backbone, patch_tokens
from trainer.eval.davis_metrics import evaluate_sequence
from trainer.eval.label_propagation import (
    DEFAULT_NEIGHBOURHOOD,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOPK,
    neighbourhood_mask,
    one_hot,
    propagate,
    to_label_map,
)
from trainer.eval.runner import frozen_network, iter_outputs
from trainer.model.inference_precision import add_precision_flag

DAVIS_MEAN = (0.485, 0.456, 0.406)
DAVIS_STD = (0.228, 0.224, 0.225)  # the authors' eval_video_segmentation.py uses 0.228 for red
SIZE_MULTIPLE = 64
METRIC_KEYS = ("J", "J_recall", "J_decay", "F", "F_recall", "F_decay")
logger = logging.getLogger(__name__)


class DavisError(ValueError):
    """A DAVIS folder or sequence that cannot be evaluated; the message says why."""


@dataclass
class Sequence:
    """One video: its frames in order, its annotations by frame stem, and its frame size."""

    name: str
    frames: list[Path]
    annotations: dict[str, Path]
    size: tuple[int, int]  # (height, width)

    @property
    def first_annotation(self) -> Path:
        return self.annotations[self.frames[0].stem]

    @property
    def fully_annotated(self) -> bool:
        return all(f.stem in self.annotations for f in self.frames)


def network_size(height: int, width: int, short_side: int = 480) -> tuple[int, int]:
    """The authors' input size: short side ``short_side``, long side floored to a multiple of 64
    (a square frame counts as landscape)."""
    if height > width:
        h, w = int((short_side * height / width) // SIZE_MULTIPLE * SIZE_MULTIPLE), short_side
    else:
        h, w = short_side, int((short_side * width / height) // SIZE_MULTIPLE * SIZE_MULTIPLE)
    if min(h, w) < 1:
        raise DavisError(
            f"a {width}x{height} frame at short side {short_side} leaves a long side below "
            f"{SIZE_MULTIPLE} px; use a larger --short_side"
        )
    return h, w


def _check_sizes(seq: Sequence) -> None:
    for path in seq.annotations.values():
        with Image.open(path) as im:
            if (im.height, im.width) != seq.size:
                raise DavisError(
                    f"annotation {path} is {im.width}x{im.height} but the frames of {seq.name!r} "
                    f"are {seq.size[1]}x{seq.size[0]}; annotations must match their frames"
                )


def load_sequence(root: Path, name: str) -> Sequence:
    """Frames and annotations of ``name`` under ``root``; errors for missing or mismatched ones."""
    frame_dir = root / "JPEGImages" / "480p" / name
    frames = sorted(frame_dir.glob("*.jpg"))
    if not frames:
        raise DavisError(f"sequence {name!r}: no .jpg frames in {frame_dir}")
    ann_dir = root / "Annotations" / "480p" / name
    annotations = {p.stem: p for p in sorted(ann_dir.glob("*.png"))}
    if frames[0].stem not in annotations:
        raise DavisError(
            f"sequence {name!r} has no annotation for its first frame: expected "
            f"{ann_dir / (frames[0].stem + '.png')} (an indexed PNG)"
        )
    with Image.open(frames[0]) as im:
        size = (im.height, im.width)
    seq = Sequence(name, frames, annotations, size)
    _check_sizes(seq)
    for f in frames[1:]:
        with Image.open(f) as im:
            if (im.height, im.width) != size:
                raise DavisError(f"frame {f} is {im.width}x{im.height}, the first is {size[::-1]}")
    return seq


def list_sequences(root: Path, names: list[str] | None) -> list[Sequence]:
    """All (or the named) sequences of a DAVIS root, validated before anything is written."""
    frame_root = root / "JPEGImages" / "480p"
    if not frame_root.is_dir():
        raise DavisError(f"{root} is not a DAVIS root: {frame_root} does not exist")
    available = sorted(p.name for p in frame_root.iterdir() if p.is_dir())
    names = available if not names else names
    unknown = [n for n in names if n not in available]
    if unknown:
        raise DavisError(f"unknown sequences {unknown}; available: {', '.join(available)}")
    return [load_sequence(root, n) for n in names]


def load_frame(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """RGB frame resized bilinearly to ``size`` (h, w), normalised with the authors' statistics."""
    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)[0]
    mean = torch.tensor(DAVIS_MEAN)[:, None, None]
    std = torch.tensor(DAVIS_STD)[:, None, None]
    return (x - mean) / std


class _Frames(torch.utils.data.Dataset):
    def __init__(self, frames: list[Path], size: tuple[int, int]) -> None:
        self.frames, self.size = frames, size

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> torch.Tensor:
        return load_frame(self.frames[index], self.size)


def _patch_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return F.normalize(patch_tokens(model, x).float(), dim=-1)


def frame_features(
    model: nn.Module,
    frames: list[Path],
    size: tuple[int, int],
    device: torch.device,
    batch_size: int = 4,
    precision: str = "fp32",
    num_workers: int = 0,
) -> Iterator[torch.Tensor]:
    """L2-normalised last-block patch features ``(N, D)`` of every frame, in order, each
    computed once (in batches of ``batch_size``, on the frozen-backbone runner)."""
    loader = torch.utils.data.DataLoader(
        _Frames(frames, size), batch_size=batch_size, num_workers=num_workers
    )
    for out, _ in iter_outputs(
        model, loader, _patch_features, device, precision, len(frames), "frames"
    ):
        yield from out


def _first_labels(seq: Sequence, grid: tuple[int, int]) -> tuple[torch.Tensor, Image.Image]:
    with Image.open(seq.first_annotation) as im:
        im.load()
        small = np.asarray(im.resize((grid[1], grid[0]), Image.NEAREST))
        return one_hot(small), im.copy()


def _write_png(path: Path, labels: np.ndarray, palette: list[int] | None) -> None:
    im = Image.fromarray(labels.astype(np.uint8), mode="P")
    if palette is not None:
        im.putpalette(palette)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        im.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class PropagationSettings:
    """The authors' propagation hyper-parameters (their flag names)."""

    n_last_frames: int = 7
    size_mask_neighborhood: int = DEFAULT_NEIGHBOURHOOD
    topk: int = DEFAULT_TOPK
    temperature: float = DEFAULT_TEMPERATURE
    short_side: int = 480


def segment_sequence(
    model: nn.Module,
    seq: Sequence,
    out_dir: Path | None,
    device: torch.device,
    settings: PropagationSettings,
    batch_size: int = 4,
    precision: str = "fp32",
    num_workers: int = 0,
) -> np.ndarray:
    """Propagate the first annotation through ``seq``; label maps ``(T, H, W)`` (frame 0 = the
    annotation); PNGs written to ``out_dir`` when given."""
    patch = model.patch_size
    size = network_size(*seq.size, settings.short_side)
    grid = (size[0] // patch, size[1] // patch)
    first_lab, first_im = _first_labels(seq, grid)
    palette = first_im.getpalette()
    mask = None
    if settings.size_mask_neighborhood > 0:
        mask = neighbourhood_mask(*grid, settings.size_mask_neighborhood, device)
    first_lab = first_lab.reshape(grid[0] * grid[1], -1).to(device)
    preds = [np.asarray(first_im, dtype=np.uint8)]
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        _write_png(out_dir / f"{seq.frames[0].stem}.png", preds[0], palette)
    feats = frame_features(model, seq.frames, size, device, batch_size, precision, num_workers)
    first_feat = next(feats)
    recent: deque[tuple[torch.Tensor, torch.Tensor]] = deque(maxlen=settings.n_last_frames)
    for frame, feat in zip(seq.frames[1:], feats, strict=True):
        src = torch.stack([first_feat] + [f for f, _ in recent])
        lab = torch.stack([first_lab] + [s for _, s in recent])
        soft = propagate(feat, src, lab, mask, settings.topk, settings.temperature)
        recent.append((feat, soft))
        labels = to_label_map(soft.T.reshape(-1, *grid), patch, seq.size)
        preds.append(labels)
        if out_dir is not None:
            _write_png(out_dir / f"{frame.stem}.png", labels, palette)
    return np.stack(preds)


def read_ground_truth(seq: Sequence) -> np.ndarray:
    """Annotation label maps ``(T, H, W)`` of a fully annotated sequence."""
    return np.stack([np.asarray(Image.open(seq.annotations[f.stem])) for f in seq.frames])


def score_sequence(seq: Sequence, preds: np.ndarray) -> dict[str, Any] | None:
    """DAVIS J/F (mean, recall, decay) per object and their sequence means; None when some
    frame has no annotation."""
    if not seq.fully_annotated or len(seq.frames) < 3:
        logger.warning("%s: not every frame is annotated (or < 3 frames); not scored", seq.name)
        return None
    gt = read_ground_truth(seq)
    n_objects = int(gt[0].max())
    per_obj = evaluate_sequence(gt, preds, n_objects)
    scores: dict[str, Any] = {k: float(np.mean(v)) for k, v in per_obj.items()}
    scores["JF"] = (scores["J"] + scores["F"]) / 2
    scores["objects"] = per_obj
    scores["n_objects"] = n_objects
    return scores


def summarise(per_seq: dict[str, dict[str, Any] | None]) -> dict[str, float]:
    """Dataset means over all objects of all scored sequences, as the DAVIS script reports."""
    scored = [s for s in per_seq.values() if s is not None]
    if not scored:
        return {}
    mean = {k: float(np.mean([v for s in scored for v in s["objects"][k]])) for k in METRIC_KEYS}
    mean["JF"] = (mean["J"] + mean["F"]) / 2
    return mean


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        "trainer.eval.davis",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, help="any checkpoint load_backbone reads")
    p.add_argument("--which", default="teacher", choices=("teacher", "student"))
    p.add_argument("--davis", type=Path, required=True, help="DAVIS root (JPEGImages/480p, ...)")
    p.add_argument("--sequences", default="", help="comma-separated names (default: all)")
    p.add_argument("--output_dir", type=Path, required=True, help="masks and results.json")
    p.add_argument("--n_last_frames", type=int, default=7, help="previous predictions as context")
    p.add_argument("--size_mask_neighborhood", type=int, default=DEFAULT_NEIGHBOURHOOD)
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="affinities kept per patch")
    p.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE)
    p.add_argument("--short_side", type=int, default=480, help="network input short side")
    p.add_argument("--batch_size", type=int, default=4, help="frames per forward pass")
    p.add_argument("--num_workers", type=int, default=0, help="frame-loading workers")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    add_precision_flag(p)
    return p


def _settings(args: argparse.Namespace) -> PropagationSettings:
    for name in ("n_last_frames", "size_mask_neighborhood"):
        if getattr(args, name) < 0:
            raise DavisError(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.topk < 1 or args.short_side < 1 or args.batch_size < 1:
        raise DavisError("--topk, --short_side and --batch_size must be >= 1")
    return PropagationSettings(
        args.n_last_frames,
        args.size_mask_neighborhood,
        args.topk,
        args.temperature,
        args.short_side,
    )


def evaluate(args: argparse.Namespace, model: nn.Module, device: torch.device) -> dict[str, Any]:
    """Segment and score every requested sequence; the results.json payload."""
    settings = _settings(args)
    names = [n.strip() for n in args.sequences.split(",") if n.strip()]
    seqs = list_sequences(args.davis, names)
    per_seq: dict[str, dict[str, Any] | None] = {}
    timing: dict[str, float] = {}
    for seq in seqs:
        start = time.perf_counter()
        preds = segment_sequence(
            model,
            seq,
            args.output_dir / seq.name,
            device,
            settings,
            args.batch_size,
            args.precision,
        )
        timing[seq.name] = time.perf_counter() - start
        per_seq[seq.name] = score_sequence(seq, preds)
        s = per_seq[seq.name]
        line = f"J&F {s['JF']:.4f} J {s['J']:.4f} F {s['F']:.4f}" if s else "not scored"
        print(f"{seq.name}: {len(seq.frames)} frames in {timing[seq.name]:.1f} s, {line}")
    n_frames = sum(len(s.frames) for s in seqs)
    return {
        "sequences": per_seq,
        "mean": summarise(per_seq),
        "settings": {**vars(settings), "precision": args.precision, "which": args.which},
        "timing": {"seconds": timing, "total_s": sum(timing.values()), "frames": n_frames},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from trainer.model.device import pick_device

    device = pick_device(args.device)
    model, info = load_eval_backbone(args.checkpoint, args.which)
    model, args.precision = frozen_network(model.to(device), args.precision, device)
    results = evaluate(args, model, device)
    name = f"{info.family} {info.arch}/{info.patch_size}"
    results["model"] = f"{args.checkpoint} ({name}, {args.which})"
    write_json(args.output_dir / "results.json", results)
    print(json.dumps(results["mean"]))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
