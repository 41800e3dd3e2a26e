"""The package's shape: layers and no cycles (import-linter), imports at module top, no
private names used across modules."""

from __future__ import annotations

import ast
from pathlib import Path

from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "wsss"
# optional heavy imports that stay inside the function that needs them
OPTIONAL = ("pydensecrf", "fsspec", "cv2")


def _modules() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(PACKAGE.rglob("*.py"))]


def test_the_import_contract_holds(monkeypatch):
    """pyproject.toml's [tool.importlinter]: cli > tune > pipeline > train > methods > core,
    viz > models, data > config, storage, tracking...; no cycles between sibling modules."""
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True,
                        no_logo=True) == 0


def _optional(node: ast.AST) -> set[int]:
    """Ids of the import statements inside ``try: ... except ImportError`` blocks."""
    guarded = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Try) and any(
                "ImportError" in ast.unparse(h.type or ast.Name("BaseException"))
                for h in sub.handlers):
            guarded |= {id(n) for stmt in sub.body for n in ast.walk(stmt)}
    return guarded


def test_imports_sit_at_module_top_except_optional_heavy_ones():
    """Inside a function only optional imports: heavy optional packages, or imports whose
    absence the function handles (``except ImportError``)."""
    inside = []
    for path, tree in _modules():
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            optional = _optional(node)
            for sub in ast.walk(node):
                if id(sub) in optional:
                    continue
                if isinstance(sub, ast.Import):
                    names = [alias.name for alias in sub.names]
                elif isinstance(sub, ast.ImportFrom):
                    names = [sub.module or ""]
                else:
                    continue
                inside += [f"{path.relative_to(ROOT)}:{sub.lineno} {name}" for name in names
                           if name.split(".")[0] not in OPTIONAL]
    assert inside == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
               for path, tree in _modules() for node in ast.walk(tree)
               if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("wsss")
               for alias in node.names if alias.name.startswith("_")]
    assert private == []
