"""The package layout's two rules, read from the source with ``ast`` (every import, also the ones
inside functions), and the size limit of product files.

1. ``backend/`` imports from ``trainer`` only ``trainer.model`` (and its submodules);
2. ``trainer/model/`` imports nothing else from ``trainer``;
3. ``app/`` imports neither ``backend`` nor ``trainer`` nor torch: it talks HTTP.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PRODUCT_PACKAGES = ("trainer", "backend", "app")
MAX_LINES = 400


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module name of ``from ... import`` (relative imports resolved)."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_modules(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every import statement of ``path``, at any depth, in line order.

    ``from pkg import name`` counts as ``pkg.name``: the name may be a submodule.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    module, is_package = _module_name(path, root), path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, module, is_package)
            found.extend(
                (node.lineno, f"{source}.{alias.name}" if source else alias.name)
                for alias in node.names
            )
    return sorted(found)


def _in_package(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def violations(folder: Path, allowed: str, root: Path = ROOT) -> list[str]:
    """``file:line module`` for each import of ``trainer`` outside ``allowed`` under ``folder``."""
    bad = []
    for path in sorted(folder.rglob("*.py")):
        for line, name in imported_modules(path, root):
            if _in_package(name, "trainer") and not _in_package(name, allowed):
                bad.append(f"{path.relative_to(root)}:{line} {name}")
    return bad


def test_the_backend_imports_only_trainer_model_from_the_trainer():
    assert violations(ROOT / "backend", "trainer.model") == []


def test_trainer_model_imports_nothing_else_from_the_trainer():
    assert violations(ROOT / "trainer" / "model", "trainer.model") == []


def test_no_library_module_imports_the_commands():
    commands = ("trainer.run", "trainer.export", "trainer.model_card")
    bad = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for package in ("model", "data", "train", "eval")
        for path in sorted((ROOT / "trainer" / package).rglob("*.py"))
        for line, name in imported_modules(path)
        if any(_in_package(name, command) for command in commands)
    ]
    assert bad == []


def test_the_app_reaches_the_service_only_over_http():
    bad = [
        f"{path.relative_to(ROOT)}:{line} {name}"
        for path in sorted((ROOT / "app").rglob("*.py"))
        for line, name in imported_modules(path)
        if any(_in_package(name, pkg) for pkg in ("backend", "trainer", "torch"))
    ]
    assert bad == []


def test_the_walk_sees_every_kind_of_import(tmp_path):
    """The checker itself: top-level, function-level, ``from``, aliased and relative imports."""
    pkg = tmp_path / "backend"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text(
        "import trainer.model.vit\n"
        "from trainer.model import checkpoint as ck\n"
        "def f():\n"
        "    from trainer.train import loss\n"
        "    import trainer.run as r\n"
        "class C:\n"
        "    def g(self):\n"
        "        from trainer import data\n"
        "from . import b\n"
    )
    (pkg / "b.py").write_text("from .a import f\n")
    assert imported_modules(pkg / "a.py", tmp_path)[-1] == (9, "backend.b")
    assert imported_modules(pkg / "b.py", tmp_path) == [(1, "backend.a.f")]
    assert violations(pkg, "trainer.model", tmp_path) == [
        "backend/a.py:4 trainer.train.loss",
        "backend/a.py:5 trainer.run",
        "backend/a.py:8 trainer.data",
    ]


@pytest.mark.parametrize("package", PRODUCT_PACKAGES)
def test_no_product_file_is_over_the_line_limit(package):
    long = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        lines = len(path.read_text().splitlines())
        if lines > MAX_LINES:
            long[str(path.relative_to(ROOT))] = lines
    assert not long, f"over {MAX_LINES} lines (split them by concept): {long}"


# The service's rooms (docs/ARCHITECTURE.md): who may import whom inside backend/.
ROOM_RULES = {
    "backend.models": ("backend.models",),
    "backend.analysis": ("backend.analysis", "backend.models"),
    "backend.video": ("backend.video", "backend.models", "backend.analysis"),
    "backend.api": ("backend.api", "backend.analysis", "backend.models", "backend.video"),
}
TOP_LEVEL = ("backend.settings", "backend.errors")  # every room may use these two
# What the video room may use of the analysis room: its public entry and its image helpers.
ANALYSIS_PUBLIC = (
    "backend.analysis.service",
    "backend.analysis.model_step",
    "backend.analysis.images",
    "backend.analysis.inference",
    "backend.analysis.params",
)


def room_violations(root: Path = ROOT) -> list[str]:
    bad = []
    for room, allowed in ROOM_RULES.items():
        for path in sorted((root / Path(*room.split("."))).rglob("*.py")):
            for line, name in imported_modules(path, root):
                if not _in_package(name, "backend") or any(_in_package(name, m) for m in TOP_LEVEL):
                    continue
                ok = any(_in_package(name, a) for a in allowed)
                if room == "backend.video" and _in_package(name, "backend.analysis"):
                    ok = any(_in_package(name, m) for m in ANALYSIS_PUBLIC)
                if not ok:
                    bad.append(f"{path.relative_to(root)}:{line} {name}")
    return bad


def test_the_service_rooms_import_in_one_direction():
    """api -> video -> analysis -> models; settings and errors import no room."""
    assert room_violations() == []
    for top in ("settings", "errors"):
        names = [n for _, n in imported_modules(ROOT / "backend" / f"{top}.py")]
        assert not [n for n in names if _in_package(n, "backend")], (top, names)


def test_the_backend_top_level_holds_few_modules_and_the_rooms():
    top = sorted(p.name for p in (ROOT / "backend").glob("*.py"))
    rooms = sorted(p.name for p in (ROOT / "backend").iterdir() if (p / "__init__.py").exists())
    assert len(top) <= 6, top
    assert rooms == ["analysis", "api", "models", "video"]


def test_no_product_file_names_a_data_folder_outside_the_repository():
    """Data paths come by flag or DINO_DATA_DIR, never a sibling folder of the checkout."""
    outside = ("../" + "shared", '"' + "shared" + '"')
    suffixes = (".py", ".md", ".sh", ".yml", ".yaml", ".toml")
    bad = [
        str(path.relative_to(ROOT))
        for folder in (*PRODUCT_PACKAGES, "benchmarks", "docs", "docker")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in suffixes and any(s in path.read_text() for s in outside)
    ]
    for name in ("README.md", "Makefile", "docker-compose.yml", "pyproject.toml"):
        if any(s in (ROOT / name).read_text() for s in outside):
            bad.append(name)
    assert bad == []


def test_the_room_checker_flags_a_reverse_import(tmp_path):
    for room in ("models", "analysis", "video", "api"):
        (tmp_path / "backend" / room).mkdir(parents=True)
    (tmp_path / "backend" / "models" / "a.py").write_text("from backend.api import routes\n")
    (tmp_path / "backend" / "video" / "b.py").write_text(
        "from backend.analysis.service import X\nfrom backend.analysis.block_maps import Y\n"
    )
    assert room_violations(tmp_path) == [
        "backend/models/a.py:1 backend.api.routes",
        "backend/video/b.py:2 backend.analysis.block_maps.Y",
    ]
