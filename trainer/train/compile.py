"""``torch.compile`` of the DINO student and teacher with one graph per crop resolution.

The list-taking :class:`~trainer.model.head.MultiCropWrapper` stays eager (it only concatenates
crops); its ``backbone`` and ``head`` are compiled in place with ``Module.compile`` and
``dynamic=False``. Each backbone then builds exactly one static graph per input shape
(student: global and local resolution; teacher: global only) and each head one graph,
and every later step reuses them:

* ``dynamic=False`` turns off automatic dynamic shapes, so the second resolution gets its
  own static graph instead of a slower shape-generic recompile;
* every compiled module shares dynamo's cache of ``Module._call_impl``, so its recompile
  limit is raised to hold all their graphs (``_MIN_RECOMPILE_LIMIT``);
* compiling in place keeps the state-dict keys (no ``_orig_mod.`` prefix), so checkpoints,
  EMA and DDP see the same parameters as in eager mode.

:class:`CountingBackend` wraps a backend and records every graph it compiles (the shapes of
its inputs), so tests and benchmarks can check that nothing recompiles after warm-up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

logger = logging.getLogger(__name__)

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
_MIN_RECOMPILE_LIMIT = 64
Backend = str | Callable


@dataclass
class GraphRecord:
    """One graph handed to the backend: the compiled module's name and its tensor input shapes."""

    module: str
    input_shapes: list[tuple[int, ...]]


class CountingBackend:
    """A ``torch.compile`` backend that records each graph, then compiles it with ``inner``."""

    def __init__(self, inner: str = "inductor", module: str = "") -> None:
        from torch._dynamo.backends.registry import lookup_backend

        self.inner_name = inner
        self.inner = lookup_backend(inner)
        self.module = module
        self.graphs: list[GraphRecord] = []

    def for_module(self, module: str) -> CountingBackend:
        """A backend that shares this one's record list but tags graphs with ``module``."""
        child = CountingBackend.__new__(CountingBackend)
        child.inner_name = self.inner_name
        child.inner = self.inner
        child.module = module
        child.graphs = self.graphs
        return child

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list) -> Callable:
        shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)]
        self.graphs.append(GraphRecord(self.module, shapes))
        logger.info(
            "compiling graph %d (%s) with %s", len(self.graphs), self.module, self.inner_name
        )
        return self.inner(gm, example_inputs)

    def count(self, module: str | None = None) -> int:
        """Graphs compiled so far, for one module name or (None) in all."""
        return sum(1 for g in self.graphs if module is None or g.module == module)


@dataclass
class CompileReport:
    """What :func:`compile_models` compiled, and the graph counter when one was attached."""

    modules: list[str] = field(default_factory=list)
    counter: CountingBackend | None = None

    def graph_counts(self) -> dict[str, int]:
        if self.counter is None:
            return {}
        return {name: self.counter.count(name) for name in self.modules}


def raise_recompile_limit(limit: int = _MIN_RECOMPILE_LIMIT) -> None:
    """Let dynamo keep at least ``limit`` graphs per code object (the setting's name differs
    across torch versions)."""
    config = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(config, name) and getattr(config, name) < limit:
            setattr(config, name, limit)
    if hasattr(config, "accumulated_cache_size_limit"):
        config.accumulated_cache_size_limit = max(config.accumulated_cache_size_limit, 4 * limit)


def _check_mode(backend: Backend, mode: str | None) -> str | None:
    if mode not in COMPILE_MODES:
        raise ValueError(
            f"unknown compile mode {mode!r}; choose one of "
            f"{', '.join(str(m) for m in COMPILE_MODES)}"
        )
    if mode in (None, "default"):
        return None
    if backend != "inductor":
        raise ValueError(f"compile mode {mode!r} needs backend 'inductor', got {backend!r}")
    return mode


def compile_models(
    student: nn.Module,
    teacher: nn.Module,
    backend: str = "inductor",
    mode: str | None = None,
    count_graphs: bool = False,
) -> CompileReport:
    """Compile ``backbone`` and ``head`` of both multi-crop wrappers in place (``dynamic=False``).

    ``student``/``teacher`` are :class:`~trainer.model.head.MultiCropWrapper` (unwrapped: pass the
    module inside DDP). With ``count_graphs=True`` (only without a ``mode``), each graph is
    recorded in ``report.counter`` under ``"student.backbone"``, ``"teacher.head"``, ...
    """
    mode = _check_mode(backend, mode)
    if count_graphs and mode is not None:
        raise ValueError("count_graphs works only with the default compile mode (mode=None)")
    raise_recompile_limit()
    report = CompileReport(counter=CountingBackend(backend) if count_graphs else None)
    for owner_name, owner in (("student", student), ("teacher", teacher)):
        for part in ("backbone", "head"):
            module = getattr(owner, part, None)
            if not isinstance(module, nn.Module):
                raise TypeError(
                    f"{owner_name} has no '{part}' module; pass the unwrapped MultiCropWrapper"
                )
            name = f"{owner_name}.{part}"
            chosen = report.counter.for_module(name) if report.counter is not None else backend
            module.compile(backend=chosen, mode=mode, dynamic=False, fullgraph=False)
            report.modules.append(name)
    logger.info(
        "compiled %s with backend %s, mode %s",
        ", ".join(report.modules),
        backend,
        mode or "default",
    )
    return report


def dynamo_graph_count() -> int:
    """Graphs dynamo compiled in this process, over every compiled function (any backend, mode)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
