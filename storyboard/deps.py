"""Write dvc.yaml's code deps from the import closure: `make deps` (python -m storyboard.deps [--check]).

Each stage's code deps are the files of its entry modules' import closure (storyboard/closure.py): the module its
`cmd` runs (`python -m M`, or `python -m storyboard.launch M`: the launcher and M). A package folder whose every
file is a module of the closure is listed as the folder (as `storyboard/train`), so dvc.yaml stays a table of
contents; other modules are listed one by one. Every other dep (data, templates, `${...}`) and every comment
stays where it is: the file is edited through ruamel.yaml's round trip, which keeps layout and comments, and
only the code entries of each `deps` list are replaced, in the place of the first one.

A code dep is a path in one of the repo's Python packages (`stages`, `storyboard`) that is a .py file, a folder
holding Python files, or gone (a stale entry). tests/test_dvc_contract.py checks the result.
"""

from __future__ import annotations

import argparse
import io
import re
import sys
from pathlib import Path

from ruamel.yaml import YAML

from storyboard.closure import ROOT, import_closure

CACHES = ("__pycache__",)


def entry_modules(cmd: str) -> list[str]:
    """The modules a stage command runs: `python -m M`, or `python -m storyboard.launch M` (the launcher, then M)."""
    match = re.match(r"python -m (\S+)(?: (\S+))?", " ".join(str(cmd).split()))
    if not match:
        raise ValueError(f"stage command {cmd!r} does not start with `python -m <module>`")
    if match.group(1) == "storyboard.launch":
        if not match.group(2):
            raise ValueError(f"stage command {cmd!r}: storyboard.launch needs the stage's module")
        return [match.group(1), match.group(2)]
    return [match.group(1)]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not any(part in CACHES for part in p.parts)]


def is_code(dep: str, root: Path) -> bool:
    """Whether dvc.yaml's dep `dep` is code the fixer writes (see the module docstring)."""
    if "${" in dep or Path(dep).parts[0] not in _packages(root):
        return False
    path = root / dep
    if path.is_dir():
        return any(p.suffix == ".py" for p in _files(path))
    return dep.endswith(".py") or not path.exists()


def _packages(root: Path) -> set[str]:
    return {p.parent.name for p in root.glob("*/__init__.py")}


def code_deps(modules: list[str], root: Path = ROOT) -> list[str]:
    """The closure of `modules` as dvc.yaml lists it: whole package folders as one entry, then the other files."""
    closure = {p.as_posix() for m in modules for p in import_closure(m, root)}
    folders: list[str] = []

    def whole(folder: Path) -> bool:
        files = _files(folder)
        return bool(files) and all(p.relative_to(root).as_posix() in closure for p in files)

    def visit(folder: Path) -> None:
        for sub in sorted(p.parent for p in folder.glob("*/__init__.py")):
            if whole(sub):
                folders.append(sub.relative_to(root).as_posix())
            else:
                visit(sub)

    for top in sorted(_packages(root)):
        visit(root / top)
    loose = [f for f in closure if not any(f.startswith(f"{d}/") for d in folders)]
    return sorted([*folders, *loose], key=lambda d: (not d.startswith("stages/"), d))


def _stage_commands(stage: dict) -> str:
    return stage["do"]["cmd"] if "foreach" in stage else stage["cmd"]


def rewrite(text: str, root: Path = ROOT) -> tuple[str, list[str]]:
    """dvc.yaml's text with each stage's code deps written from its closure, and a line per change."""
    yaml = YAML()
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.width = 4096  # never fold a line the file did not fold
    yaml.preserve_quotes = True
    data = yaml.load(text)
    changes = []
    for name, stage in data["stages"].items():
        body = stage["do"] if "foreach" in stage else stage
        deps = body.get("deps")
        if deps is None:
            continue
        wanted = code_deps(entry_modules(_stage_commands(stage)), root)
        code = [i for i, dep in enumerate(deps) if is_code(str(dep), root)]
        had = [str(deps[i]) for i in code]
        changes += [f"{name}: + {d}" for d in wanted if d not in had]
        changes += [f"{name}: - {d}" for d in had if d not in wanted]
        if had == wanted:
            continue
        first = code[0] if code else len(deps)
        for i in reversed(code):
            del deps[i]
        for offset, dep in enumerate(wanted):
            deps.insert(first + offset, dep)
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue(), changes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dvc_yaml", nargs="?", default="dvc.yaml", type=Path)
    parser.add_argument("--check", action="store_true", help="only say what would change; exit 1 if anything would")
    args = parser.parse_args(argv)
    text = args.dvc_yaml.read_text(encoding="utf-8")
    new, changes = rewrite(text, args.dvc_yaml.resolve().parent)
    for line in changes:
        print(line)
    if new == text:
        print(f"{args.dvc_yaml}: code deps are the import closure")
        return 0
    if args.check:
        print(f"{args.dvc_yaml}: code deps differ from the import closure; run `make deps`")
        return 1
    args.dvc_yaml.write_text(new, encoding="utf-8")
    print(f"{args.dvc_yaml}: rewrote the code deps")
    return 0


if __name__ == "__main__":
    sys.exit(main())
