"""The layering rule of ``core/`` (docs/ARCHITECTURE.md): a stage imports only itself and the stages below it.

Every import counts: module-level, inside functions (lazy), under ``TYPE_CHECKING``, relative, and
``importlib.import_module`` with a literal name. ``core/errors.py`` and ``core/atomic.py`` are the leaves every
stage may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"

# Bottom to top: a stage may import every stage of a lower layer, never one of a higher layer.
LAYERS: list[tuple[str, ...]] = [
    ("slides",),
    ("cohort",),
    ("model", "viewer"),  # peers: neither imports the other
    ("analysis",),
    ("review",),  # the queue ranks analysis's label issues, so review sits above analysis
    ("demo",),
    ("cli", "bench"),  # peers that may import each other: the command line mounts the benchmarks
]
MUTUAL = {"cli", "bench"}
LEAVES = ("errors", "atomic")  # flat modules that import nothing of core; every stage may import them
ENTRY = {"__init__": set(), "__main__": {"cli"}}  # core/__main__.py is ``python -m core``: it runs the command line
ORDER = [stage for layer in LAYERS for stage in layer]


def allowed() -> dict[str, set[str]]:
    """Stage -> the other stages it may import (the leaf aside)."""
    out: dict[str, set[str]] = dict(ENTRY)
    below: set[str] = set()
    for layer in LAYERS:
        for stage in layer:
            out[stage] = below | (set(layer) - {stage} if stage in MUTUAL else set())
        below = below | set(layer)
    out.update({leaf: set() for leaf in LEAVES})
    return out


ALLOWED = allowed()


def stage_of(path: Path, core: Path) -> str | None:
    """The stage of a file under ``core``; None for a file in no stage (a flat module nobody placed)."""
    parts = path.relative_to(core).parts
    name = parts[0].removesuffix(".py")
    if len(parts) == 1:
        return name if name in LEAVES or name in ENTRY else None
    return name if name in ORDER else None


def _literal_prefix(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return str(node.values[0].value)
    return None


def imported_modules(path: Path, core: Path) -> list[str]:
    """Every ``core...`` module that ``path`` imports, anywhere in the file, in the order of the source."""
    package = ["core", *path.relative_to(core).parent.parts]
    found: list[tuple[int, int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names = [f"core.{a.name}" for a in node.names] if module == "core" else [module]
        elif isinstance(node, ast.Call) and node.args and getattr(node.func, "attr",
                                                                  getattr(node.func, "id", None)) == "import_module":
            names = [p.rstrip(".")] if (p := _literal_prefix(node.args[0])) else []
        found += [(node.lineno, node.col_offset, n) for n in names if n == "core" or n.startswith("core.")]
    return [n for *_, n in sorted(found)]


def violations(core: Path = CORE) -> list[str]:
    """One line per import against the layers, and one per file in no stage."""
    out = []
    for path in sorted(core.rglob("*.py")):
        rel = f"core/{path.relative_to(core).as_posix()}"
        stage = stage_of(path, core)
        if stage is None:
            out.append(f"{rel} is in no stage: move it into one of core/{{{','.join(ORDER)}}}/")
            continue
        may = ALLOWED[stage] | {stage} | (set(LEAVES) - {stage})
        for module in imported_modules(path, core):
            target = module.split(".")[1] if "." in module else "core"
            if target in may:
                continue
            if target not in ALLOWED:
                out.append(f"{rel} imports {module}, which is in no stage")
                continue
            others = [s for s in [*LEAVES, *ORDER, "__main__"] if s in ALLOWED[stage] | (set(LEAVES) - {stage})]
            may_text = f"{', '.join(others)} and itself" if others else "itself"
            out.append(f"{rel} imports {module} ({stage} may import only {may_text})")
    return out


def test_core_imports_follow_the_layers() -> None:
    assert violations() == []


def test_every_stage_is_a_package_whose_docstring_states_its_rule() -> None:
    missing = [s for s in ORDER if "May import" not in (ast.get_docstring(ast.parse(
        (CORE / s / "__init__.py").read_text())) or "")]
    assert missing == []


def test_the_scan_sees_lazy_relative_dynamic_and_unplaced_imports(tmp_path: Path) -> None:
    core = tmp_path / "core"
    for rel, text in {
        "__init__.py": "",
        "errors.py": "",
        "slides/__init__.py": "",
        "slides/slide.py": ("from core import errors\nfrom core.slides import tiling\n\n\ndef f():\n"
                            "    import core.review.store\n    from ..model import features\n"
                            "    import importlib\n    importlib.import_module(f'core.viewer.{f}')\n"),
        "review/__init__.py": "",
        "review/queue.py": "from core.analysis.metrics import x\nfrom core.demo import plan\nimport core.stray\n",
        "stray.py": "",
    }.items():
        (core / rel).parent.mkdir(parents=True, exist_ok=True)
        (core / rel).write_text(text)
    assert violations(core) == [
        "core/review/queue.py imports core.demo (review may import only errors, atomic, slides, cohort, model, "
        "viewer, analysis and itself)",
        "core/review/queue.py imports core.stray, which is in no stage",
        "core/slides/slide.py imports core.review.store (slides may import only errors, atomic and itself)",
        "core/slides/slide.py imports core.model (slides may import only errors, atomic and itself)",
        "core/slides/slide.py imports core.viewer (slides may import only errors, atomic and itself)",
        "core/stray.py is in no stage: move it into one of core/{slides,cohort,model,viewer,analysis,review,demo,"
        "cli,bench}/",
    ]
