"""core/ is the ground floor: it imports nothing from methods, eval, toyworld or cli."""
import ast
import os

CORE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "concept_edit", "core")
UPPER = ("methods", "eval", "cli", "toyworld")


def _imports(path):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            yield ("." * node.level) + mod


def test_core_imports_no_upper_layer():
    bad = []
    for f in os.listdir(CORE):
        if not f.endswith(".py"):
            continue
        for name in _imports(os.path.join(CORE, f)):
            parts = name.lstrip(".").split(".")
            if name.startswith("concept_edit.") and parts[1] in UPPER:
                bad.append((f, name))
            if name.startswith("..") and parts[0] in UPPER:
                bad.append((f, name))
    assert not bad, bad


def test_methods_do_not_import_each_other():
    root = os.path.join(os.path.dirname(CORE), "methods")
    methods = [d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("_")]
    bad = []
    for m in methods:
        for dirpath, _, files in os.walk(os.path.join(root, m)):
            for f in files:
                if f.endswith(".py"):
                    for name in _imports(os.path.join(dirpath, f)):
                        for other in methods:
                            if other != m and (f"methods.{other}" in name or name.lstrip(".") == other
                                               or name.startswith(f"..{other}")):
                                bad.append((m, f, name))
    assert not bad, bad
