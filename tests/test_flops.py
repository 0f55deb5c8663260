"""Analytic FLOPs against the numbers quoted for ViT-S/16 and against torch's FlopCounterMode."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from trainer.model.head import DINOHead, MultiCropWrapper
from trainer.model.vit import build_vit
from trainer.train.flops import dino_head_flops, dino_step_flops_per_image, mfu, vit_forward_flops


def test_vit_small_reference_numbers():
    assert vit_forward_flops(384, 12, 6, 16, 224) == pytest.approx(9.2e9, rel=0.02)
    assert vit_forward_flops(384, 12, 6, 16, 96) == pytest.approx(1.6e9, rel=0.02)
    step = dino_step_flops_per_image("vit_small", 16, 224, 96, 10)
    assert step == pytest.approx(123.8e9, rel=0.02)


def test_step_is_three_student_passes_plus_teacher():
    g = vit_forward_flops(192, 12, 3, 16, 224) + dino_head_flops(192, 1000)
    loc = vit_forward_flops(192, 12, 3, 16, 96) + dino_head_flops(192, 1000)
    got = dino_step_flops_per_image("vit_tiny", 16, 224, 96, 6, out_dim=1000)
    assert got == pytest.approx(3 * (2 * g + 6 * loc) + 2 * g)
    no_head = dino_step_flops_per_image(
        embed_dim=192, depth=12, num_heads=3, out_dim=0, local_crops_number=0
    )
    assert no_head == pytest.approx(4 * 2 * vit_forward_flops(192, 12, 3, 16, 224))


def counted_flops(module, *inputs):
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        module(*inputs)
    return counter.get_total_flops()


@pytest.mark.parametrize("image_size", [32, 20])
def test_vit_forward_matches_flop_counter(image_size):
    torch.manual_seed(0)
    vit = build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=4).eval()
    vit.set_fused_attention(False)  # explicit matmuls, which FlopCounterMode counts on CPU
    counted = counted_flops(vit, torch.randn(1, 3, image_size, image_size))
    assert vit_forward_flops(48, 2, 3, 4, image_size) == pytest.approx(counted, rel=1e-9)


def test_backbone_plus_head_matches_flop_counter():
    torch.manual_seed(0)
    vit = build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=4).eval()
    vit.set_fused_attention(False)
    model = MultiCropWrapper(vit, DINOHead(48, 64, hidden_dim=32, bottleneck_dim=16)).eval()
    crops = [torch.randn(1, 3, 16, 16)] * 2 + [torch.randn(1, 3, 8, 8)] * 3
    counted = counted_flops(model, crops)
    head = dino_head_flops(48, 64, 32, 16, 3)
    expected = 2 * (vit_forward_flops(48, 2, 3, 4, 16) + head) + 3 * (
        vit_forward_flops(48, 2, 3, 4, 8) + head
    )
    assert expected == pytest.approx(counted, rel=1e-9)
    student_fwd = expected
    step = dino_step_flops_per_image(
        patch_size=4,
        global_crops_size=16,
        local_crops_size=8,
        local_crops_number=3,
        embed_dim=48,
        depth=2,
        num_heads=3,
        out_dim=64,
        head_hidden_dim=32,
        head_bottleneck_dim=16,
    )
    assert step == pytest.approx(3 * student_fwd + 2 * (vit_forward_flops(48, 2, 3, 4, 16) + head))


def test_mfu_and_validation():
    assert mfu(100e9, 1000, 1e15) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="peak_flops"):
        mfu(1.0, 1.0, 0)
    with pytest.raises(ValueError, match="unknown arch 'vit_huge'"):
        dino_step_flops_per_image("vit_huge")
    with pytest.raises(ValueError, match="divisible"):
        vit_forward_flops(50, 2, 3, 4, 32)
