"""The house's code figures, from the AST: the numbers issue 15 asks for, before and after.

    python -m tools.code_figures          # a table
    python -m tools.code_figures --json   # the same, for a diff

Source is every module under ``dicom_node/`` and ``workers/`` except the Alembic revisions
(generated shape, one function each). Lines are physical lines of the file. A function's size
is its span from ``def`` to its last line, decorators excluded. "Annotated" means every
parameter but ``self``/``cls`` and the return carry an annotation. A broad except is a bare
``except:``, ``except Exception`` or ``except BaseException`` (alone or in a tuple).
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_PACKAGES = ("dicom_node", "workers")
EXCLUDED = ("dicom_node/db/migrations/versions", "dicom_node/models/")  # models: package data
BROAD = {"Exception", "BaseException"}


@dataclass(frozen=True)
class Figures:
    source_modules: int
    source_lines: int
    test_lines: int
    module_p90: int
    module_max: int
    module_max_name: str
    function_p90: int
    function_max: int
    function_max_name: str
    annotated_pct: float
    broad_excepts: int
    broad_per_kloc: float
    test_to_src: float
    modules_no_test_imports: int
    modules_no_unit_test_imports: int


def source_files() -> list[Path]:
    files = []
    for package in SOURCE_PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if not rel.startswith(EXCLUDED):
                files.append(path)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def p90(values: list[int]) -> int:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)]


def functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def is_annotated(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    if args and args[0].arg in {"self", "cls"}:
        args = args[1:]
    extra = [a for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
    return fn.returns is not None and all(a.annotation is not None for a in [*args, *extra])


def is_broad(handler: ast.ExceptHandler) -> bool:
    kind = handler.type
    if kind is None:
        return True
    names = kind.elts if isinstance(kind, ast.Tuple) else [kind]
    return any(isinstance(n, ast.Name) and n.id in BROAD for n in names)


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """Source modules a test module imports, by name (``from a.b import c`` counts a.b.c too)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        else:
            continue
        found.update(n for n in names if n in known)
    return found


def measure() -> Figures:
    sizes: dict[str, int] = {}
    spans: dict[str, int] = {}
    annotated = total_functions = broad = 0
    for path in source_files():
        text = path.read_text()
        name = module_name(path)
        sizes[name] = len(text.splitlines())
        tree = ast.parse(text)
        for fn in functions(tree):
            total_functions += 1
            annotated += is_annotated(fn)
            spans[f"{name}:{fn.name}"] = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        broad += sum(is_broad(h) for h in ast.walk(tree) if isinstance(h, ast.ExceptHandler))
    known = set(sizes)
    by_tests: set[str] = set()
    by_unit_tests: set[str] = set()
    test_lines = 0
    for path in sorted((ROOT / "tests").rglob("*.py")):
        text = path.read_text()
        test_lines += len(text.splitlines())
        used = imported_modules(ast.parse(text), known)
        by_tests |= used
        if "unit" in path.relative_to(ROOT).parts:
            by_unit_tests |= used
    # A package's __init__ with nothing in it is not a module anyone needs to test.
    testable = {m for m in known if sizes[m] > 6}
    source_lines = sum(sizes.values())
    biggest = max(sizes, key=lambda m: sizes[m])
    longest = max(spans, key=lambda f: spans[f])
    return Figures(
        source_modules=len(sizes),
        source_lines=source_lines,
        test_lines=test_lines,
        module_p90=p90(list(sizes.values())),
        module_max=sizes[biggest],
        module_max_name=biggest,
        function_p90=p90(list(spans.values())),
        function_max=spans[longest],
        function_max_name=longest,
        annotated_pct=round(100 * annotated / total_functions, 1),
        broad_excepts=broad,
        broad_per_kloc=round(1000 * broad / source_lines, 2),
        test_to_src=round(test_lines / source_lines, 2),
        modules_no_test_imports=len(testable - by_tests),
        modules_no_unit_test_imports=len(testable - by_unit_tests),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    figures = measure()
    if args.json:
        print(json.dumps(asdict(figures), indent=2))
    else:
        for key, value in asdict(figures).items():
            print(f"{key:32} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
