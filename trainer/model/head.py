"""DINO projection head and the multi-crop wrapper (backbone + head).

State-dict keys follow the official checkpoints: ``head.mlp.{0,2,4}.*`` (or with BN
``head.mlp.{0,1,3,4,6}.*``), ``head.last_layer.weight_g`` and ``head.last_layer.weight_v``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class WeightNormLinear(nn.Module):
    """Bias-free linear layer with weight normalisation, ``W = g * v / ||v||`` per output row.

    Written out (rather than ``nn.utils.weight_norm``) so the parameter names stay
    ``weight_g`` / ``weight_v`` on every torch version, matching the official checkpoints.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight_g = nn.Parameter(torch.ones(out_features, 1))
        self.weight_v = nn.Parameter(torch.empty(out_features, in_features))
        nn.init.trunc_normal_(self.weight_v, std=0.02)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * self.weight_v / self.weight_v.norm(dim=1, keepdim=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP (hidden 2048, GELU, optional BN) -> bottleneck -> L2 norm -> weight-normed layer."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        use_bn: bool = False,
        norm_last_layer: bool = True,
        nlayers: int = 3,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        nlayers = max(nlayers, 1)
        if nlayers == 1:
            self.mlp: nn.Module = nn.Linear(in_dim, bottleneck_dim)
        else:
            layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
            for _ in range(nlayers - 2):
                layers += self._act(hidden_dim, use_bn) + [nn.Linear(hidden_dim, hidden_dim)]
            layers += self._act(hidden_dim, use_bn) + [nn.Linear(hidden_dim, bottleneck_dim)]
            self.mlp = nn.Sequential(*layers)
        self.apply(self._init_weights)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)
        if norm_last_layer:
            self.last_layer.weight_g.requires_grad = False

    @staticmethod
    def _act(dim: int, use_bn: bool) -> list[nn.Module]:
        return ([nn.BatchNorm1d(dim)] if use_bn else []) + [nn.GELU()]

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mlp(x)
        x = F.normalize(x, dim=-1, p=2, eps=1e-12)  # fp32-safe: eps as in F.normalize
        return self.last_layer(x)


class MultiCropWrapper(nn.Module):
    """Runs the backbone once per resolution group of crops, then the head on all of them."""

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, crops: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        if isinstance(crops, torch.Tensor):
            crops = [crops]
        feats = []
        start = 0
        sizes = [tuple(c.shape[-2:]) for c in crops]
        while start < len(crops):  # consecutive crops of one size share a forward pass
            end = start
            while end < len(crops) and sizes[end] == sizes[start]:
                end += 1
            feats.append(self.backbone(torch.cat(crops[start:end])))
            start = end
        return self.head(torch.cat(feats))
