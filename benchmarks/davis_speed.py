"""Time ``trainer.eval.davis`` against a re-implementation of the authors' procedure.

The reference follows the structure of the DINO authors' ``eval_video_segmentation.py``: one
frame per forward pass, the window mask rebuilt for every sequence with four nested Python
loops, a dense ``exp(cos / T)`` affinity multiplied by the mask, a top-k threshold over all
context patches, a dense label product and a per-label Python min-max loop. Both paths read the
same frames with the same resize, on the same model, in the same process; the script prints
both times, the speed-up and the fraction of mask pixels on which they agree.

    python -m benchmarks.davis_speed --checkpoint CKPT --davis ROOT [--sequences a,b]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections import deque

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from trainer.eval.davis import (
    PropagationSettings,
    Sequence,
    list_sequences,
    load_frame,
    network_size,
    score_sequence,
    segment_sequence,
)
from trainer.eval.label_propagation import one_hot

logger = logging.getLogger(__name__)


def loop_window_mask(h: int, w: int, r: int) -> torch.Tensor:
    """The authors' (h*w, h*w) float window mask, built with four nested loops."""
    mask = torch.zeros(h, w, h, w)
    for i in range(h):
        for j in range(w):
            for p in range(2 * r + 1):
                for q in range(2 * r + 1):
                    y, x = i - r + p, j - r + q
                    if 0 <= y < h and 0 <= x < w:
                        mask[i, j, y, x] = 1
    return mask.reshape(h * w, h * w)


def reference_step(
    tar: torch.Tensor,
    srcs: torch.Tensor,
    segs: torch.Tensor,
    mask: torch.Tensor | None,
    topk: int,
    temp: float,
) -> torch.Tensor:
    """One dense propagation step: ``tar`` (N, D), ``srcs`` (M, D, N), ``segs`` (M, C, N) ->
    (C, N)."""
    m = srcs.shape[0]
    n = tar.shape[0]
    aff = torch.exp(torch.bmm(tar[None].repeat(m, 1, 1), srcs) / temp)  # M x N_tar x N_src
    if mask is not None:
        aff = aff * mask[None]
    aff = aff.transpose(2, 1).reshape(-1, n)  # M*N_src x N_tar
    kth = aff.topk(topk, dim=0).values.min(dim=0).values
    aff[aff < kth] = 0
    aff = aff / aff.sum(dim=0, keepdim=True)
    c = segs.shape[1]
    return segs.transpose(2, 1).reshape(-1, c).T @ aff


def _reference_labels(soft: torch.Tensor, patch: int, frame_hw: tuple[int, int]) -> np.ndarray:
    up = F.interpolate(soft[None], scale_factor=patch, mode="bilinear", align_corners=False)[0]
    for c in range(up.shape[0]):
        ch = up[c]
        if ch.max() > 0:
            ch = ch - ch.min()
            up[c] = ch / ch.max()
    lab = np.array(up.argmax(dim=0).cpu(), dtype=np.uint8)
    return np.array(Image.fromarray(lab).resize((frame_hw[1], frame_hw[0]), Image.NEAREST))


@torch.no_grad()
def reference_segment(
    model: nn.Module, seq: Sequence, settings: PropagationSettings, device: torch.device
) -> np.ndarray:
    """Label maps ``(T, H, W)`` of the authors' procedure (frame 0 = the annotation)."""
    patch = model.patch_size
    size = network_size(*seq.size, settings.short_side)
    h, w = size[0] // patch, size[1] // patch

    def feat(path):
        x = load_frame(path, size)[None].to(device)
        return model.get_intermediate_layers(x, 1)[0][0, 1:]  # N x D

    with Image.open(seq.first_annotation) as im:
        first = np.asarray(im, dtype=np.uint8)
        small = np.asarray(im.resize((w, h), Image.NEAREST))
    first_seg = one_hot(small).permute(2, 0, 1).reshape(1, -1, h * w).to(device)
    first_feat = F.normalize(feat(seq.frames[0]), dim=1).T
    r = settings.size_mask_neighborhood
    mask = loop_window_mask(h, w, r).to(device) if r > 0 else None
    queue: deque = deque(maxlen=settings.n_last_frames)
    preds = [first]
    for path in seq.frames[1:]:
        tar = F.normalize(feat(path), dim=1)
        srcs = torch.stack([first_feat] + [f for f, _ in queue])
        segs = torch.cat([first_seg] + [s for _, s in queue])
        soft = reference_step(tar, srcs, segs, mask, settings.topk, settings.temperature)
        queue.append((tar.T, soft[None]))
        preds.append(_reference_labels(soft.reshape(-1, h, w), patch, seq.size))
    return np.stack(preds)


def run(args: argparse.Namespace) -> dict:
    """Time both procedures on every sequence; their agreement and J&F."""
    from trainer.model.checkpoint import load_backbone

    device = torch.device(args.device)
    model, info = load_backbone(args.checkpoint)
    model.to(device).eval()
    settings = PropagationSettings()
    names = [n for n in args.sequences.split(",") if n]
    report = {"model": f"{info.arch}/{info.patch_size}", "sequences": {}}
    totals = {"ours_s": 0.0, "authors_s": 0.0, "agree": 0, "pixels": 0}
    for seq in list_sequences(args.davis, names):
        t0 = time.perf_counter()
        ours = segment_sequence(model, seq, None, device, settings, args.batch_size)
        t1 = time.perf_counter()
        ref = reference_segment(model, seq, settings, device)
        t2 = time.perf_counter()
        agree = int((ours[1:] == ref[1:]).sum())
        pixels = int(ref[1:].size)
        jf_ours, jf_ref = score_sequence(seq, ours), score_sequence(seq, ref)
        row = {
            "frames": len(seq.frames),
            "ours_s": t1 - t0,
            "authors_s": t2 - t1,
            "pixel_agreement": agree / pixels,
            "JF_ours": None if jf_ours is None else jf_ours["JF"],
            "JF_authors": None if jf_ref is None else jf_ref["JF"],
        }
        report["sequences"][seq.name] = row
        for k, v in (("ours_s", t1 - t0), ("authors_s", t2 - t1), ("agree", agree)):
            totals[k] += v
        totals["pixels"] += pixels
        print(f"{seq.name}: {json.dumps(row)}")
    report["ours_s"], report["authors_s"] = totals["ours_s"], totals["authors_s"]
    report["speedup"] = totals["authors_s"] / max(totals["ours_s"], 1e-9)
    report["pixel_agreement"] = totals["agree"] / max(totals["pixels"], 1)
    return report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser("benchmarks.davis_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--davis", type=__import__("pathlib").Path, required=True)
    p.add_argument("--sequences", default="")
    p.add_argument("--batch_size", type=int, default=4)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    report = run(args)
    print(
        f"ours {report['ours_s']:.1f} s, authors' procedure {report['authors_s']:.1f} s, "
        f"speed-up x{report['speedup']:.2f}, mask pixel agreement {report['pixel_agreement']:.4%}"
    )
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
