"""Param groups, optimiser factory, LARS step, per-parameter clipping and last-layer freezing."""

import pytest
import torch
from torch import nn

from trainer.train.optim import (
    LARS,
    build_optimizer,
    cancel_gradients_last_layer,
    clip_gradients,
    get_params_groups,
)


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.norm = nn.LayerNorm(2)
        self.token = nn.Parameter(torch.zeros(1, 1, 2))
        self.scale = nn.Parameter(torch.ones(1))
        self.frozen = nn.Parameter(torch.ones(2, 2), requires_grad=False)
        self.last_layer = nn.Linear(2, 2, bias=False)


def ids(params):
    return {id(p) for p in params}


def test_param_groups_split_decay_and_skip_frozen():
    m = Toy()
    regularized, plain = get_params_groups(m)
    assert ids(regularized["params"]) == ids([m.fc.weight, m.token, m.last_layer.weight])
    assert ids(plain["params"]) == ids([m.fc.bias, m.norm.weight, m.norm.bias, m.scale])
    assert plain["weight_decay"] == 0.0 and "weight_decay" not in regularized


@pytest.mark.parametrize(
    "name,cls", [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD), ("LARS", LARS)]
)
def test_build_optimizer_kinds(name, cls):
    opt = build_optimizer(name, get_params_groups(Toy()), lr=0.1)
    assert isinstance(opt, cls) and len(opt.param_groups) == 2
    assert opt.param_groups[1]["weight_decay"] == 0.0
    if name == "sgd":
        assert opt.param_groups[0]["momentum"] == 0.9


def test_build_optimizer_fused_on_cpu_and_falls_back_elsewhere():
    assert build_optimizer("adamw", get_params_groups(Toy()), fused=True).defaults.get("fused")
    assert not build_optimizer("adamw", get_params_groups(Toy()), fused=False).defaults.get("fused")
    opt = build_optimizer(
        "adamw", get_params_groups(Toy().to("meta")), fused=True
    )  # no fused kernel there
    assert not opt.defaults.get("fused")


def test_unknown_optimizer_lists_choices():
    with pytest.raises(
        ValueError, match="unknown optimizer 'adam'; choose one of adamw, sgd, lars"
    ):
        build_optimizer("adam", get_params_groups(Toy()))


def reference_lars_step(w, g, mu, lr, wd, momentum, eta, adapt):
    """One LARS step written from the paper, per parameter, in float64."""
    u = g + wd * w if adapt else g.clone()
    if adapt:
        w_norm, u_norm = w.norm().item(), u.norm().item()
        u = u * (eta * w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
    mu = momentum * mu + u
    return w - lr * mu, mu


def test_lars_two_steps_match_reference():
    torch.manual_seed(0)
    w, b = (
        nn.Parameter(torch.randn(4, 3, dtype=torch.float64)),
        nn.Parameter(torch.randn(4, dtype=torch.float64)),
    )
    zero = nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    opt = LARS([{"params": [w, zero]}, {"params": [b], "weight_decay": 0.0}], lr=0.0)
    ref = {
        "w": (w.detach().clone(), torch.zeros(4, 3, dtype=torch.float64)),
        "b": (b.detach().clone(), torch.zeros(4, dtype=torch.float64)),
    }
    for step in range(2):
        grads = {
            "w": torch.randn(4, 3, dtype=torch.float64),
            "b": torch.randn(4, dtype=torch.float64),
        }
        w.grad, b.grad, zero.grad = (
            grads["w"].clone(),
            grads["b"].clone(),
            torch.ones(2, 2, dtype=torch.float64),
        )
        opt.param_groups[0].update(lr=0.5 + step, weight_decay=0.04)
        opt.param_groups[1]["lr"] = 0.5 + step
        opt.step()
        for name, adapt, wd in (("w", True, 0.04), ("b", False, 0.0)):
            ref[name] = reference_lars_step(
                *ref[name][:1], grads[name], ref[name][1], 0.5 + step, wd, 0.9, 0.001, adapt
            )
        torch.testing.assert_close(w.detach(), ref["w"][0])
        torch.testing.assert_close(b.detach(), ref["b"][0])
        if step == 0:  # a zero-norm weight gets trust ratio 1: a plain momentum step from zero
            torch.testing.assert_close(zero.detach(), torch.full((2, 2), -0.5, dtype=torch.float64))


def test_clip_gradients_matches_per_parameter_loop():
    torch.manual_seed(1)
    m = Toy()
    grads = {
        "fc.weight": torch.randn(2, 3) * 10,
        "fc.bias": torch.tensor([0.1, -0.2]),
        "token": torch.tensor([[[3.0, 4.0]]]),
        "last_layer.weight": torch.randn(2, 2) * 0.01,
    }
    for name, p in m.named_parameters():
        p.grad = grads[name].clone() if name in grads else None
    norms = clip_gradients(m, clip=2.0)
    expected_norms = [grads[n].norm() for n, p in m.named_parameters() if n in grads]
    torch.testing.assert_close(norms, torch.stack(expected_norms))
    for name, p in m.named_parameters():
        if name not in grads:
            assert p.grad is None
            continue
        g = grads[name]
        coef = 2.0 / (g.norm() + 1e-6)
        expected = g * coef if coef < 1 else g  # DINO's per-parameter rule
        torch.testing.assert_close(p.grad, expected)
    assert torch.equal(m.fc.bias.grad, grads["fc.bias"])  # below clip: untouched
    assert m.token.grad.norm().item() == pytest.approx(2.0, rel=1e-5)  # norm 5 -> clipped to 2


def test_clip_gradients_without_grads_and_bad_clip():
    assert clip_gradients(Toy(), 1.0).numel() == 0
    with pytest.raises(ValueError, match="clip must be > 0"):
        clip_gradients(Toy(), 0.0)


@pytest.mark.parametrize("epoch,cancelled", [(0, True), (1, False), (3, False)])
def test_cancel_gradients_last_layer(epoch, cancelled):
    m = Toy()
    for p in m.parameters():
        p.grad = torch.ones_like(p)
    cancel_gradients_last_layer(epoch, m, freeze_last_layer=1)
    assert (m.last_layer.weight.grad is None) == cancelled
    assert m.fc.weight.grad is not None


def test_clipping_and_lars_have_no_host_sync():
    # meta tensors have no data: any .item()/bool()/.cpu() would raise
    m = Toy().to("meta")
    for p in m.parameters():
        p.grad = torch.randn_like(p)
    assert clip_gradients(m, 1.0).shape == (len(list(m.parameters())),)
    opt = build_optimizer("lars", get_params_groups(m), lr=0.1)
    opt.param_groups[0]["weight_decay"] = 0.04
    opt.step()


def test_clip_gradients_bfloat16_grads():
    m = nn.Linear(4, 4).bfloat16()
    m.weight.grad = (torch.ones(4, 4) * 3).bfloat16()
    m.bias.grad = torch.full((4,), 0.25).bfloat16()
    norms = clip_gradients(m, 1.0)
    torch.testing.assert_close(norms, torch.tensor([12.0, 0.5]))
    assert m.weight.grad.dtype == torch.bfloat16
    assert m.weight.grad.float().norm().item() == pytest.approx(1.0, rel=1e-2)
    assert torch.equal(m.bias.grad, torch.full((4,), 0.25).bfloat16())
