"""The fast training paths give the eager path's results on the same batch (CPU).

* ``trainer.train.compile.compile_models`` (backend ``aot_eager``: the same dynamo capture and
  AOT autograd as inductor, without the slow C++ code generation on 2 cores) matches eager
  in fp32 and within bf16 tolerance under bf16 autocast, builds one graph per crop
  resolution and never recompiles afterwards;
* fused SDPA attention matches the explicit softmax(QK^T/sqrt(d))V attention;
* foreach, single-tensor and (CPU) fused AdamW match a hand-written AdamW (Loshchilov &
  Hutter). The CUDA fused kernel cannot run here; the GPU benchmark script uses it.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from trainer.model.head import DINOHead, MultiCropWrapper
from trainer.model.vit import build_vit
from trainer.train.compile import CountingBackend, compile_models
from trainer.train.config import make_config
from trainer.train.engine import Schedules, TrainContext, train_step
from trainer.train.loss import DINOLoss
from trainer.train.optim import build_optimizer, get_params_groups


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run faster on one thread than on shared, oversubscribed cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


BATCH, GLOBAL, LOCAL, N_LOCAL, OUT_DIM, STEPS = 4, 32, 16, 2, 64, 3


def tiny_pair(seed: int = 0) -> tuple[MultiCropWrapper, MultiCropWrapper]:
    torch.manual_seed(seed)
    student = MultiCropWrapper(
        build_vit(embed_dim=48, depth=2, num_heads=3, patch_size=4),
        DINOHead(48, OUT_DIM, hidden_dim=64, bottleneck_dim=32),
    )
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return student, teacher


def make_ctx(
    student: MultiCropWrapper, teacher: MultiCropWrapper, precision: str = "fp32"
) -> TrainContext:
    cfg = make_config(
        arch="vit_tiny",
        patch_size=4,
        out_dim=OUT_DIM,
        global_crops_size=GLOBAL,
        local_crops_size=LOCAL,
        local_crops_number=N_LOCAL,
        epochs=1,
        batch_size_per_gpu=BATCH,
        freeze_last_layer=0,
        clip_grad=3.0,
    )
    schedules = Schedules(
        lr=np.linspace(1e-3, 5e-4, STEPS),
        wd=np.linspace(0.04, 0.1, STEPS),
        momentum=np.linspace(0.9, 0.95, STEPS),
    )
    loss = DINOLoss(OUT_DIM, N_LOCAL + 2, 0.04, 0.04, 0, 1)
    optimizer = build_optimizer("adamw", get_params_groups(student))
    return TrainContext(
        cfg,
        student,
        teacher,
        student,
        teacher,
        loss,
        optimizer,
        schedules,
        torch.device("cpu"),
        precision,
    )


def make_crops(seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(BATCH, 3, GLOBAL, GLOBAL, generator=g) for _ in range(2)] + [
        torch.randn(BATCH, 3, LOCAL, LOCAL, generator=g) for _ in range(N_LOCAL)
    ]


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, atol: float) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()  # compiling in place keeps the checkpoint keys
    for key in sa:
        torch.testing.assert_close(
            sa[key], sb[key], atol=atol, rtol=0, msg=lambda m, k=key: f"{k}: {m}"
        )


EXPECTED_GRAPHS = {
    "student.backbone": 2,
    "student.head": 1,
    "teacher.backbone": 1,
    "teacher.head": 1,
}


def test_compiled_step_matches_eager_and_compiles_once_per_resolution():
    eager = make_ctx(*tiny_pair())
    fast = make_ctx(*tiny_pair())
    report = compile_models(fast.student, fast.teacher, backend="aot_eager", count_graphs=True)
    for it in range(STEPS):
        crops = make_crops(it)
        loss_eager, _, _ = train_step(eager, crops, 0, it)
        if it == 0:
            loss_fast, _, _ = train_step(fast, crops, 0, it)
            assert report.graph_counts() == EXPECTED_GRAPHS
        else:  # later steps must reuse the graphs: any recompilation raises
            with torch._dynamo.config.patch(error_on_recompile=True):
                loss_fast, _, _ = train_step(fast, crops, 0, it)
        torch.testing.assert_close(loss_fast, loss_eager, atol=1e-5, rtol=1e-5)
        # Adam divides by sqrt(v): float rounding of a near-zero gradient can move a weight by
        # ~lr/10.
        assert_same_weights(fast.student, eager.student, atol=1e-4)
        assert_same_weights(
            fast.teacher, eager.teacher, atol=1e-4
        )  # EMA through the compiled modules
    assert report.graph_counts() == EXPECTED_GRAPHS
    dims = [d for g in report.counter.graphs for shape in g.input_shapes for d in shape]
    assert all(type(d) is int for d in dims)  # static graphs: no symbolic (dynamic) sizes
    images = {
        s
        for g in report.counter.graphs
        if g.module == "student.backbone"
        for s in g.input_shapes
        if len(s) == 4 and s[1] == 3 and s[-1] in (GLOBAL, LOCAL)
    }
    assert images == {(2 * BATCH, 3, GLOBAL, GLOBAL), (N_LOCAL * BATCH, 3, LOCAL, LOCAL)}


def test_compiled_step_matches_eager_under_bf16_autocast():
    eager = make_ctx(*tiny_pair(1), precision="bf16")
    fast = make_ctx(*tiny_pair(1), precision="bf16")
    compile_models(fast.student, fast.teacher, backend="aot_eager")
    crops = make_crops(7)
    loss_eager, out_eager, _ = train_step(eager, crops, 0, 0)
    loss_fast, out_fast, _ = train_step(fast, crops, 0, 0)
    assert loss_fast.dtype == loss_eager.dtype
    torch.testing.assert_close(loss_fast.float(), loss_eager.float(), atol=2e-2, rtol=1e-2)
    torch.testing.assert_close(out_fast.float(), out_eager.float(), atol=5e-2, rtol=5e-2)
    # One AdamW step moves each weight by about lr; bf16 rounding may flip a few update signs.
    assert_same_weights(fast.student, eager.student, atol=2.5e-3)
    moved = [
        (a - b).abs().max()
        for a, b in zip(fast.student.parameters(), tiny_pair(1)[0].parameters(), strict=True)
    ]
    assert (
        max(moved) > 5e-4
    )  # the step did change the weights, so the comparison above means something


def test_fused_attention_step_matches_explicit_attention():
    results = []
    for fused in (True, False):
        ctx = make_ctx(*tiny_pair(2))
        for model in (ctx.student, ctx.teacher):
            model.backbone.set_fused_attention(fused)
        loss, out, _ = train_step(ctx, make_crops(3), 0, 0)
        grads = [p.grad.clone() for p in ctx.student.parameters() if p.grad is not None]
        results.append((loss, out, grads, ctx.student))
    (loss_f, out_f, grads_f, model_f), (loss_e, out_e, grads_e, model_e) = results
    assert len(grads_f) == len(grads_e) > 0
    torch.testing.assert_close(loss_f, loss_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out_f, out_e, atol=1e-4, rtol=1e-4)
    for gf, ge in zip(grads_f, grads_e, strict=True):
        torch.testing.assert_close(gf, ge, atol=1e-5, rtol=1e-4)
    assert_same_weights(model_f, model_e, atol=1e-4)  # Adam amplifies rounding of near-zero grads


def reference_adamw(
    params: list[torch.Tensor],
    grads: list[list[torch.Tensor]],
    lrs: list[float],
    wds: list[float],
    decayed: list[bool],
    betas=(0.9, 0.999),
    eps=1e-8,
) -> list[torch.Tensor]:
    """Decoupled weight decay Adam, written from the paper: p -= lr*wd*p; p -=
    lr*m_hat/(sqrt(v_hat)+eps)."""
    params = [p.detach().clone().double() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, (step_grads, lr, wd) in enumerate(zip(grads, lrs, wds, strict=True), start=1):
        for i, (p, g) in enumerate(zip(params, step_grads, strict=True)):
            g = g.double()
            m[i] = betas[0] * m[i] + (1 - betas[0]) * g
            v[i] = betas[1] * v[i] + (1 - betas[1]) * g * g
            m_hat, v_hat = m[i] / (1 - betas[0] ** t), v[i] / (1 - betas[1] ** t)
            p.mul_(1 - lr * (wd if decayed[i] else 0.0))
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return params


@pytest.mark.parametrize("impl", ["foreach", "single_tensor", "fused_cpu"])
def test_adamw_implementations_match_reference(impl: str):
    student, _ = tiny_pair(3)
    groups = get_params_groups(student)
    decayed = [True] * len(groups[0]["params"]) + [False] * len(groups[1]["params"])
    params = groups[0]["params"] + groups[1]["params"]
    initial = [p.detach().clone() for p in params]
    g = torch.Generator().manual_seed(0)
    grads = [[torch.randn(p.shape, generator=g) * 1e-2 for p in params] for _ in range(STEPS)]
    lrs, wds = [1e-3, 2e-3, 5e-4], [0.04, 0.2, 0.4]
    kwargs = {
        "foreach": {"foreach": True},
        "single_tensor": {"foreach": False},
        "fused_cpu": {"fused": True},
    }[impl]
    opt = torch.optim.AdamW(groups, lr=0.0, **kwargs)
    for step_grads, lr, wd in zip(grads, lrs, wds, strict=True):
        opt.param_groups[0]["weight_decay"] = wd  # as the trainer: only group 0 is regularised
        for group in opt.param_groups:
            group["lr"] = lr
        for p, grad in zip(params, step_grads, strict=True):
            p.grad = grad.clone()
        opt.step()
    expected = reference_adamw(initial, grads, lrs, wds, decayed)
    for p, ref in zip(params, expected, strict=True):
        torch.testing.assert_close(p.detach().double(), ref, atol=1e-6, rtol=1e-5)
    assert max((p.detach() - s).abs().max() for p, s in zip(params, initial, strict=True)) > 1e-3


def test_compile_models_is_lazy_keeps_keys_and_checks_arguments():
    student, teacher = tiny_pair()
    keys = list(student.state_dict())
    report = compile_models(student, teacher, backend="aot_eager", count_graphs=True)
    assert list(student.state_dict()) == keys
    assert report.modules == list(EXPECTED_GRAPHS)
    assert report.graph_counts() == dict.fromkeys(
        EXPECTED_GRAPHS, 0
    )  # nothing compiled before a call
    with pytest.raises(ValueError, match="choose one of"):
        compile_models(student, teacher, mode="fastest")
    with pytest.raises(ValueError, match="needs backend 'inductor'"):
        compile_models(student, teacher, backend="aot_eager", mode="max-autotune")
    with pytest.raises(TypeError, match="unwrapped MultiCropWrapper"):
        compile_models(student.backbone, teacher)
    counter = CountingBackend("eager")
    assert counter.count() == 0 and counter.for_module("x").graphs is counter.graphs
