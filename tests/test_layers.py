"""The layers of `raftreg/` point one way: every import of a raftreg package from another one
(at module level or inside a function) goes to a lower layer. The order is written here once;
docs/design.md draws it. Two packages in one layer may not import each other."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1] / "raftreg"

# bottom first; "raftreg" is the root package itself (its __version__)
LAYERS: tuple[frozenset[str], ...] = tuple(frozenset(layer.split()) for layer in (
    "raftreg errors logfmt pb",
    "config",
    "common",         # public value types (KeyValue...), status table, proto conversions,
                      # grpc.aio handler wrapping, clocks
    "store",          # the pure state machine: its commands, the log envelope, the codec
    "consensus",
    "server",         # RegistryNode, lessor, watch hub
    "api",            # gRPC servicers (raftreg.v1 and etcd's names), auth, JSON gateway
    "client",
    "resilience",
    "discovery configcenter concurrency",
    "dashboard",
    "daemon",         # the node process: the composition root
    "cli testing",
))
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}


def package_of(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return "raftreg" if parts == ("__init__",) else parts[0]


def imported(node: ast.AST) -> list[str]:
    """The raftreg packages an import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "raftreg":  # from raftreg import errors, __version__
            return [a.name if a.name in RANK else "raftreg" for a in node.names]
        names = [node.module]
    else:
        return []
    return [n.split(".")[1] if "." in n else "raftreg" for n in names
            if n == "raftreg" or n.startswith("raftreg.")]


def test_every_package_has_a_layer() -> None:
    packages = {package_of(p) for p in ROOT.rglob("*.py")}
    assert packages - RANK.keys() == set(), "add new packages to LAYERS"
    assert RANK.keys() - packages == set(), "LAYERS names a package that is gone"


def test_imports_point_down() -> None:
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        src = package_of(path)
        if src == "pb":
            continue  # generated
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for dst in imported(node):
                if dst != src and RANK[dst] >= RANK[src]:
                    wrong.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} "
                                 f"{src} -> {dst}")
    assert wrong == [], "imports that do not point down:\n" + "\n".join(wrong)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    node = ast.parse("from raftreg.client import GrpcRegistryClient\n").body[0]
    assert imported(node) == ["client"] and RANK["client"] > RANK["server"]
    assert imported(ast.parse("from raftreg import errors as E\n").body[0]) == ["errors"]
    assert imported(ast.parse("import raftreg.api.auth\n").body[0]) == ["api"]


def test_the_value_types_import_only_the_standard_library() -> None:
    """`raftreg.common.types` sits below the pure store: importing it must not pull in grpc,
    protobuf or anything else outside the standard library (and `raftreg/common/__init__.py`
    imports nothing, so importing the module does not load its siblings)."""
    def top_modules(path: Path) -> set[str]:
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0 and node.module, f"{path}:{node.lineno} relative import"
                names.add(node.module.split(".")[0])
        return names

    assert top_modules(ROOT / "common" / "__init__.py") == set()
    foreign = top_modules(ROOT / "common" / "types.py") - sys.stdlib_module_names
    assert foreign == set(), f"raftreg/common/types.py imports {sorted(foreign)}"
