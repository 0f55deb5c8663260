"""An independent, straightforward DINO ViT written from the paper and the authors' recipe.

It reads a plain state dict and runs every block with explicit softmax(QK^T / sqrt(d)) V,
the authors' positional-embedding interpolation and their mask procedure, with nothing
imported from the project. Tests compare the project's fused / CLS-only paths against it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

# the authors' normalisation (ImageNet statistics)
AUTHORS_MEAN, AUTHORS_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def ref_square_input(image: Image.Image, image_size: int, patch: int) -> torch.Tensor:
    """The authors' visualize_attention.py preprocessing: Resize((s, s)), ToTensor, Normalize,
    then a top-left crop to a multiple of ``patch``; a batch of one."""
    transform = transforms.Compose(
        [
            transforms.Resize((image_size, image_size)),
            transforms.ToTensor(),
            transforms.Normalize(AUTHORS_MEAN, AUTHORS_STD),
        ]
    )
    img = transform(image)
    h, w = img.shape[1] - img.shape[1] % patch, img.shape[2] - img.shape[2] % patch
    return img[None, :, :h, :w]


def ref_pos_embed(pos_embed: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
    n = pos_embed.shape[1] - 1
    if n == gh * gw and gh == gw:
        return pos_embed
    side = int(math.sqrt(n))
    dim = pos_embed.shape[-1]
    grid = pos_embed[:, 1:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    grid = F.interpolate(
        grid, scale_factor=((gh + 0.1) / math.sqrt(n), (gw + 0.1) / math.sqrt(n)), mode="bicubic"
    )
    grid = grid.permute(0, 2, 3, 1).reshape(1, -1, dim)
    return torch.cat([pos_embed[:, :1], grid], dim=1)


def _layer_norm(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-6)


def _block(x: torch.Tensor, sd: dict, i: int, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    p = f"blocks.{i}."
    b, n, d = x.shape
    h = _layer_norm(x, sd, p + "norm1")
    qkv = h @ sd[p + "attn.qkv.weight"].T + sd[p + "attn.qkv.bias"]
    q, k, v = qkv.reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // heads), dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(b, n, d)
    x = x + out @ sd[p + "attn.proj.weight"].T + sd[p + "attn.proj.bias"]
    h = _layer_norm(x, sd, p + "norm2")
    h = F.gelu(h @ sd[p + "mlp.fc1.weight"].T + sd[p + "mlp.fc1.bias"])
    x = x + h @ sd[p + "mlp.fc2.weight"].T + sd[p + "mlp.fc2.bias"]
    return x, attn


def ref_forward(sd: dict, img: torch.Tensor, heads: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised tokens, last block's full attention (B, heads, 1+N, 1+N)) for a batch."""
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    x = F.conv2d(img, w, sd["patch_embed.proj.bias"], stride=p)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + ref_pos_embed(sd["pos_embed"], gh, gw)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    attn = None
    for i in range(depth):
        x, attn = _block(x, sd, i, heads)
    return _layer_norm(x, sd, "norm"), attn


def ref_masks(cls_attn: torch.Tensor, threshold: float) -> torch.Tensor:
    """The authors' procedure, head by head: sort, normalise, cumsum, keep > 1 - t, unsort."""
    heads = cls_attn.shape[0]
    flat = cls_attn.reshape(heads, -1)
    val, idx = torch.sort(flat)
    val = val / val.sum(dim=1, keepdim=True)
    cum = torch.cumsum(val, dim=1)
    th = cum > (1 - threshold)
    unsort = torch.argsort(idx)
    out = torch.stack([th[h][unsort[h]] for h in range(heads)])
    return out.reshape(cls_attn.shape)


def ref_block_readout(
    sd: dict, img: torch.Tensor, heads: int, layer: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(full attention of block ``layer`` (B, heads, 1+N, 1+N), that block's output tokens).

    Every block up to ``layer`` runs explicitly; the tokens get the final norm only when ``layer``
    is the last block (as the authors' ``get_intermediate_layers`` returns them).
    """
    w = sd["patch_embed.proj.weight"]
    p = w.shape[-1]
    x = F.conv2d(img, w, sd["patch_embed.proj.bias"], stride=p)
    gh, gw = x.shape[-2:]
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), x], dim=1)
    x = x + ref_pos_embed(sd["pos_embed"], gh, gw)
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    layer = layer % depth
    attn = None
    for i in range(layer + 1):
        x, attn = _block(x, sd, i, heads)
    if layer == depth - 1:
        x = _layer_norm(x, sd, "norm")
    return attn, x
