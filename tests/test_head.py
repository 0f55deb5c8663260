"""DINOHead: MLP -> bottleneck -> L2 norm -> weight-normalised last layer."""

from __future__ import annotations

import torch

from trainer.model.head import DINOHead, MultiCropWrapper
from trainer.model.vit import build_vit


def test_official_key_names_and_shapes() -> None:
    head = DINOHead(384, 1000)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert shapes == {
        "mlp.0.weight": (2048, 384),
        "mlp.0.bias": (2048,),
        "mlp.2.weight": (2048, 2048),
        "mlp.2.bias": (2048,),
        "mlp.4.weight": (256, 2048),
        "mlp.4.bias": (256,),
        "last_layer.weight_g": (1000, 1),
        "last_layer.weight_v": (1000, 256),
    }
    bn = DINOHead(384, 10, use_bn=True)
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in bn.mlp)


def test_forward_matches_equations() -> None:
    torch.manual_seed(0)
    head = DINOHead(16, 7, hidden_dim=32, bottleneck_dim=8)
    with torch.no_grad():
        head.last_layer.weight_g.mul_(torch.rand(7, 1) + 0.5)
    x = torch.randn(5, 16)
    m = head.mlp
    gelu = torch.nn.functional.gelu
    h = gelu(x @ m[0].weight.T + m[0].bias)
    h = gelu(h @ m[2].weight.T + m[2].bias)
    z = h @ m[4].weight.T + m[4].bias
    z = z / z.norm(dim=1, keepdim=True)
    v, g = head.last_layer.weight_v, head.last_layer.weight_g
    w = g * v / v.norm(dim=1, keepdim=True)
    torch.testing.assert_close(head(x), z @ w.T, atol=1e-5, rtol=1e-5)


def test_norm_last_layer_fixes_the_norm() -> None:
    fixed = DINOHead(16, 7, hidden_dim=32, bottleneck_dim=8, norm_last_layer=True)
    free = DINOHead(16, 7, hidden_dim=32, bottleneck_dim=8, norm_last_layer=False)
    assert not fixed.last_layer.weight_g.requires_grad and free.last_layer.weight_g.requires_grad
    torch.testing.assert_close(fixed.last_layer.weight.norm(dim=1), torch.ones(7))
    # the output is a cosine similarity when the norm is fixed at 1: bounded by 1
    out = fixed(torch.randn(9, 16) * 100)
    assert out.abs().max() <= 1 + 1e-5


def test_multicrop_wrapper_groups_resolutions() -> None:
    torch.manual_seed(0)
    backbone = build_vit(embed_dim=32, depth=1, num_heads=2, patch_size=4).eval()
    model = MultiCropWrapper(backbone, DINOHead(32, 5, hidden_dim=16, bottleneck_dim=8)).eval()
    crops = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    with torch.no_grad():
        out = model(crops)
        expected = torch.cat([model.head(backbone(c)) for c in crops])
    assert out.shape == (6, 5)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
