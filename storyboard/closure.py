"""Which files are a stage's code: the repo modules its entry module imports, transitively, lazy imports included.

Two things need the same answer. DVC reruns a stage when a file in its deps changes, so dvc.yaml must list these
files (tests/test_dvc_contract.py compares); and work that outlives a process (a training checkpoint, a rendered
story) is reused only when the code that made it is unchanged, so its fingerprint hashes them.

Python's own resolution (`importlib.util.find_spec`, from the repo root as `python -m stages.x` runs) decides
where each name lives. The walk reads the source (AST) rather than importing it, so it also sees imports inside
functions (the tiny builder's, say), which importing the module at load time would miss; imports under
`if TYPE_CHECKING:` never run and are left out. Package `__init__` modules run on the way to a submodule, so
they count. Names outside the repo (torch, diffusers) are not followed.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the folder that holds the storyboard package (the repo root)


def _repo_module(name: str, root: Path) -> Path | None:
    """The file of module `name` if it lives under `root`, else None (third-party, builtin, or not a module)."""
    top = name.split(".")[0]
    if not ((root / top / "__init__.py").is_file() or (root / f"{top}.py").is_file()):
        # Not ours (a folder such as dvclive/ may share a package's name): don't let find_spec import a large
        # third-party package's parents.
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # `from pkg import attr`: pkg.attr is no module
        return None
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        return None
    path = Path(spec.origin).resolve()
    return path if path.is_relative_to(root) else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(tree: ast.AST, package: str) -> list[str]:
    """Every module name an import statement in `tree` may load, with the parents Python loads on the way."""
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    with_parents = []
    for name in names:
        parts = name.split(".")
        with_parents.extend(".".join(parts[: i + 1]) for i in range(len(parts)))
    return with_parents


def import_closure(entry: str, root: Path | str = ROOT) -> list[Path]:
    """Files (relative to `root`) of `entry` and every repo module it imports, transitively; sorted."""
    root = Path(root).resolve()
    if str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))  # resolve as `python -m` from the repo root does
    seen: dict[str, Path] = {}
    todo = [entry]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = _repo_module(name, root)
        if path is None:
            continue
        seen[name] = path
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        todo.extend(n for n in _imported_names(tree, package) if n not in seen)
    return sorted({p.relative_to(root) for p in seen.values()})


def code_fingerprint(entry: str, root: Path | str = ROOT, leave_out: tuple[str, ...] = ()) -> str:
    """sha256 over the paths and bytes of `entry`'s import closure: changes exactly when its code does.

    `leave_out`: closure files (repo-relative, posix) whose edits must not count; what they import still does."""
    root = Path(root).resolve()
    digest = hashlib.sha256()
    for rel in import_closure(entry, root):
        if rel.as_posix() in leave_out:
            continue
        digest.update(rel.as_posix().encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()
