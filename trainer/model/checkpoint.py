"""Checkpoint files: atomic writes, safe reads, and backbone loading from every common format.

Formats understood by :func:`load_backbone`:

(a) official backbone-only weights (``dino_deitsmall16_pretrain.pth``): a flat state dict;
(b) full training checkpoints (the authors' or this trainer's ``checkpoint.pth``): the
    ``teacher`` (default) or ``student`` entry, ``module.`` / ``backbone.`` prefixes removed,
    head keys ignored;
(c) timm ViT state dicts, possibly nested under ``state_dict`` or ``model``;
(d) ``teacher_backbone.safetensors`` written by :func:`export_backbone_safetensors`, whose
    metadata names the architecture;
(e) DINOv2, with or without registers (:mod:`trainer.model.dinov2`): the authors' hub
    ``dinov2_vit*14[_reg4]_pretrain.pth``, timm's ``vit_*_patch14[_reg4]_dinov2`` state dicts
    (``.safetensors`` / ``.pth``), and transformers' ``Dinov2Model`` /
    ``Dinov2WithRegistersModel`` ``model.safetensors``, alone or in its folder with ``config.json``;
(f) DINOv3 ViTs (:mod:`trainer.model.dinov3`): the authors' hub ``dinov3_vit*16*_pretrain_*.pth``
    (``storage_tokens``, ``rope_embed.periods``, ``qkv.bias_mask``) and timm's
    ``vit_*_patch16_dinov3*`` state dicts, and transformers ``DINOv3ViTModel`` folders (or their
    ``model.safetensors``), served as timm ``Eva`` models. The authors' ConvNeXt
    backbones are refused: they have no attention.

Everything is read with ``torch.load(weights_only=True)`` or safetensors: no unpickling.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file as load_safetensors

from trainer.model.backbone_info import BackboneInfo, CheckpointError
from trainer.model.checkpoint_claims import check_param_claim as _param_claim
from trainer.model.checkpoint_claims import check_tensor_claims, parse_normalisation
from trainer.model.checkpoint_write import (  # noqa: F401 - the public names live here too
    atomic_torch_save,
    default_file_mode,
    export_backbone_safetensors,
)
from trainer.model.dinov2 import SUPPORTED as DINOV2_SUPPORTED
from trainer.model.dinov2 import (
    build_dinov2,
    infer_dinov2_arch,
    is_authors_layout,
    is_dinov2_state,
    to_timm_layout,
)
from trainer.model.dinov3 import (
    SAT493M_MEAN,
    SAT493M_STD,
    build_dinov3,
    infer_dinov3_arch,
    is_convnext_state,
    is_dinov3_state,
    is_sat493m,
    max_params,
)
from trainer.model.dinov3 import is_authors_layout as is_dinov3_authors
from trainer.model.dinov3 import to_timm_layout as dinov3_to_timm
from trainer.model.hf_dinov2 import check_config, hf_prefix, hf_to_authors, read_config
from trainer.model.hf_dinov3 import check_hf_config, is_hf_dinov3_config, read_hf_config
from trainer.model.hf_dinov3 import hf_to_authors as hf3_to_authors
from trainer.model.vit import DinoViT, arch_from_dims, build_vit

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors")
HF_WEIGHTS = "model.safetensors"
HF3_PATCH = (
    "embeddings.patch_embeddings.weight",
    "embeddings.patch_embeddings.proj.weight",
)  # the weights file of a transformers model folder
FORMATS = (
    "DINO backbone or training checkpoint (.pth/.pt), timm ViT state dict, exported .safetensors, "
    "DINOv2 (authors' hub .pth, timm, transformers model.safetensors or its folder), "
    "DINOv3 ViT (authors' hub .pth, timm)"
)
_DROP_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_NON_BACKBONE = ("head.", "fc_norm.", "last_layer.")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` with ``weights_only=True``; a clear error if that is impossible.

    ``argparse.Namespace`` is the one class allowed beyond tensors and containers: the authors'
    full checkpoints store their ``args`` as one. It holds plain attributes and runs no code.
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            # mmap: a large file is not read into memory before its shapes are known
            mmap = zipfile.is_zipfile(path)
            obj = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - every reason becomes one readable message
        why = f": {exc}" if zipfile.is_zipfile(path) else " (truncated, or not a torch archive)"
        raise CheckpointError(
            f"cannot read {Path(path).name} as a weights-only torch file{why}"
        ) from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{Path(path).name} holds a {type(obj).__name__}, not a state dict")
    return obj


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _DROP_PREFIXES:
            if key.startswith(p):
                key = key[len(p) :]
                changed = True
    return key


def extract_backbone_state(
    obj: dict[str, Any], which: str = "teacher"
) -> tuple[dict[str, torch.Tensor], str]:
    """Backbone tensors from any supported layout, and a word naming the layout found."""
    if which not in ("teacher", "student"):
        raise ValueError(f"unknown checkpoint part {which!r}; choose one of teacher, student")
    source = "backbone"
    if "teacher" in obj or "student" in obj:
        if which not in obj:
            raise CheckpointError(
                f"training checkpoint has no {which!r} entry (has {sorted(obj)[:8]})"
            )
        obj = obj[which]
        source = f"training-{which}"
    else:
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                source = "timm"
                break
    state = {}
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            continue
        k = _strip(k)
        if not k.startswith(_NON_BACKBONE):
            state[k] = v
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        raise CheckpointError(
            "no ViT backbone found: missing pos_embed / patch_embed.proj.weight; "
            f"supported: {FORMATS}"
        )
    return state, source


def infer_arch(state: dict[str, torch.Tensor]) -> tuple[int, int, int, int]:
    """(patch_size, embed_dim, depth, num_heads) from tensor shapes; heads = dim / 64."""
    proj = state["patch_embed.proj.weight"]
    embed_dim = int(proj.shape[0])
    patch = int(proj.shape[-1])
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    heads = max(embed_dim // 64, 1)
    if embed_dim % heads:
        raise CheckpointError(f"embed dim {embed_dim} is not divisible into heads of 64")
    return patch, embed_dim, depth, heads


def _from_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        return load_safetensors(str(path)), meta
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot read {path.name} as safetensors: {exc}") from exc


def _read_raw(path: Path) -> tuple[dict[str, Any], dict[str, str], int | None]:
    """The file's top-level dict, its safetensors metadata and its epoch (when recorded)."""
    if path.suffix not in CHECKPOINT_SUFFIXES:
        raise CheckpointError(
            f"unsupported file type {path.suffix!r}; use one of {', '.join(CHECKPOINT_SUFFIXES)} "
            f"or a transformers folder with {HF_WEIGHTS}"
        )
    if path.suffix == ".safetensors":
        raw, meta = _from_safetensors(path)
        return raw, meta, int(meta["epoch"]) if meta.get("epoch") else None
    obj = load_checkpoint(path)
    check_tensor_claims(obj, path.name, path.stat().st_size)  # before any copy is made
    return obj, {}, obj.get("epoch") if isinstance(obj.get("epoch"), int) else None


def _weights_path(path: Path) -> tuple[Path, dict[str, Any] | None]:
    """A file, or a transformers folder's ``model.safetensors`` with its checked ``config.json``."""
    if not path.is_dir():
        return path, None
    try:
        config = read_config(path)
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    weights = path / HF_WEIGHTS
    if not weights.is_file():
        raise CheckpointError(
            f"folder {path.name} has no {HF_WEIGHTS}; a model folder holds {HF_WEIGHTS} "
            "and config.json (transformers Dinov2Model / Dinov2WithRegistersModel)"
        )
    return weights, config


def read_backbone(
    path: str | Path, which: str = "teacher"
) -> tuple[dict[str, torch.Tensor], BackboneInfo]:
    """Backbone state and :class:`BackboneInfo` of a file or folder, without building a model."""
    path, hf3 = Path(path), None
    if path.is_dir() and is_hf_dinov3_config(path):
        hf3, path = read_hf_config(path), path / HF_WEIGHTS
        if not path.is_file():
            raise CheckpointError(f"folder {path.parent.name} has no {HF_WEIGHTS}")
        config = None
    else:
        path, config = _weights_path(path)
    raw, meta, epoch = _read_raw(path)
    dinov3 = _dinov3_read(raw, path, meta, hf3)
    if dinov3 is not None:
        state, info = dinov3
        info.epoch = epoch
        return state, info
    prefix = hf_prefix(raw)
    if prefix is not None:
        try:
            raw = hf_to_authors(raw, prefix)
        except ValueError as exc:
            raise CheckpointError(str(exc)) from exc
    state, source = extract_backbone_state(raw, which)
    _param_claim(state, path.name)  # DINO_MAX_PARAMS before a conversion or a model
    if meta.get("format") == "dino-backbone":
        source = "safetensors"
    if is_dinov2_state(state):
        state, info = _dinov2_info(state, "transformers" if prefix is not None else source, config)
    else:
        patch, dim, depth, heads = infer_arch(state)
        arch = meta.get("arch") or arch_from_dims(dim) or f"vit_d{dim}"
        info = BackboneInfo(
            arch=arch, patch_size=patch, embed_dim=dim, depth=depth, num_heads=heads, layout=source
        )
    if meta.get("num_heads"):
        info.num_heads = int(meta["num_heads"])
    info.epoch = epoch
    info.trained = meta.get("trained", "true") != "false"
    if meta.get("mean") or meta.get("std"):
        info.mean, info.std = parse_normalisation(meta)
    info.extra = _json_object(meta.get("extra"))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info


def _dinov3_read(
    raw: dict[str, Any], path: Path, meta: dict[str, str], config: dict[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], BackboneInfo] | None:
    """DINOv3 ViT weights in timm's layout and their info; None when ``raw`` is not DINOv3.

    A ConvNeXt backbone, or DINOv3 weights that cannot be served, raise :class:`CheckpointError`.
    """
    obj = raw.get("model", raw.get("state_dict", raw))
    if not isinstance(obj, dict):
        return None
    state = {_strip(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    # transformers' DINOv3 (DINOv2's patch embedding is ``patch_embeddings.projection``)
    hf = (
        any(k.startswith(HF3_PATCH) for k in state)
        and "embeddings.position_embeddings" not in state
    )
    if hf:
        try:
            state = hf3_to_authors(state)
        except ValueError as exc:
            raise CheckpointError(f"not a supported DINOv3 transformers file: {exc}") from exc
    if is_convnext_state(state):
        raise CheckpointError(
            f"{path.name} is a ConvNeXt backbone: ConvNeXt backbones have no attention, so "
            "there are no attention maps to serve; use a DINOv3 ViT (vit*16) file"
        )
    if not is_dinov3_state(state):
        return None
    state = {k: v for k, v in state.items() if not k.startswith(_NON_BACKBONE)}
    try:
        arch = infer_dinov3_arch(state)
        source = "transformers" if hf else "authors" if is_dinov3_authors(state) else "timm"
        if config is not None:
            check_hf_config(config, arch.embed_dim, arch.depth, arch.storage)
        # over DINO_MAX_PARAMS: no conversion (and no float copy); load_backbone refuses it
        state = {} if arch.params > max_params() else dinov3_to_timm(state, arch)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"not a supported DINOv3 checkpoint: {exc}") from exc
    info = BackboneInfo(
        arch=arch.name,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        layout=source,
        dinov3=arch,
    )
    if is_sat493m(path.name, meta):
        info.mean, info.std = SAT493M_MEAN, SAT493M_STD
    info.trained = meta.get("trained", "true") != "false"
    info.extra = _json_object(meta.get("extra"))
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}, info


def _dinov2_info(
    state: dict[str, torch.Tensor], source: str, config: dict[str, Any] | None
) -> tuple[dict[str, torch.Tensor], BackboneInfo]:
    """DINOv2 weights in timm's layout and their info; ``source`` names the layout found."""
    try:
        arch = infer_dinov2_arch(state)
        if config is not None:
            heads = check_config(
                config, arch.embed_dim, arch.depth, arch.patch_size, arch.registers
            )
            arch = dataclasses.replace(arch, num_heads=heads)
        if source != "transformers" and is_authors_layout(state):
            source = "authors"
        elif source in ("backbone", "timm"):
            source = "timm"
        state = to_timm_layout(state, arch)
    except (ValueError, KeyError, RuntimeError) as exc:
        reason = str(exc) if "supported:" in str(exc) else f"{exc}; supported: {DINOV2_SUPPORTED}"
        raise CheckpointError(f"not a supported DINOv2 checkpoint: {reason}") from exc
    info = BackboneInfo(
        arch=arch.name,
        patch_size=arch.patch_size,
        embed_dim=arch.embed_dim,
        depth=arch.depth,
        num_heads=arch.num_heads,
        layout=source,
        dinov2=arch,
    )
    return state, info


def _json_object(text: str | None) -> dict[str, Any]:
    """The ``extra`` metadata as a dict ({} when absent or not a JSON object)."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _load_dinov3(state: dict[str, torch.Tensor], info: BackboneInfo) -> torch.nn.Module:
    """A timm ``Eva`` of ``info.dinov3`` with ``state`` loaded strictly, in eval mode."""
    if info.dinov3.params > max_params():
        raise CheckpointError(
            f"{info.arch} has {info.dinov3.params:,} parameters, over the DINO_MAX_PARAMS limit "
            f"of {max_params():.3g}; it is not loaded"
        )
    model = build_dinov3(info.dinov3)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit a DINOv3 {info.arch}/16: {exc}") from exc
    return model.eval()


def load_backbone(path: str | Path, which: str = "teacher") -> tuple[DinoViT, BackboneInfo]:
    """Build a :class:`DinoViT` (DINO or DINOv2) and load a checkpoint into it with
    ``strict=True``."""
    state, info = read_backbone(path, which)
    if info.dinov3 is not None:
        return _load_dinov3(state, info), info
    if info.dinov2 is not None:
        model = build_dinov2(info.dinov2)
        if model.num_heads != info.num_heads:
            model = build_dinov2(dataclasses.replace(info.dinov2, num_heads=info.num_heads))
        grid = f"{info.dinov2.pos_grid * info.patch_size} px grid"
    else:
        model = build_vit(
            info.arch,
            info.patch_size,
            embed_dim=info.embed_dim,
            depth=info.depth,
            num_heads=info.num_heads,
        )
        grid = "224 px grid"
    if state["pos_embed"].shape != model.pos_embed.shape:
        raise CheckpointError(
            f"pos_embed has shape {tuple(state['pos_embed'].shape)}, "
            f"expected {tuple(model.pos_embed.shape)} ({grid})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit a {info.arch}/{info.patch_size}: {exc}") from exc
    return model.eval(), info
