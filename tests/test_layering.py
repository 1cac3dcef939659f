"""The allowed-import matrix: core <- toyworld <- scorers <- methods <- eval <- cli (app on top).

Every import in the package (absolute or relative, at any depth, inside functions too) is
resolved to its layer; an import of a layer not allowed for the importing layer fails the test.
Methods never import each other. ``--help`` and argument errors import neither torch nor diffusers.
"""
import ast
import os
import subprocess
import sys

PKG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "concept_edit")
ALLOWED = {
    "core": {"core"},
    "toyworld": {"core", "toyworld"},
    "scorers": {"core", "toyworld", "scorers"},
    "methods": {"core", "scorers", "methods"},
    "eval": {"core", "toyworld", "scorers", "methods", "eval"},
    "cli": {"core", "toyworld", "scorers", "methods", "eval", "cli"},
}


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.relpath(path, os.path.dirname(PKG))[:-3].replace(os.sep, ".")
                yield path, rel.removesuffix(".__init__"), f == "__init__.py"


def _imports(path, modname, is_pkg):
    tree = ast.parse(open(path).read())
    base = modname.split(".") if is_pkg else modname.split(".")[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - node.level + 1]
                mod = ".".join(parent + ([node.module] if node.module else []))
                yield mod
                if not node.module:
                    for a in node.names:
                        yield f"{mod}.{a.name}"
            else:
                yield node.module or ""


def _layer(mod: str):
    parts = mod.split(".")  # concept_edit.X...: X is a layer; top-level names (__version__) are light
    return parts[1] if len(parts) > 1 and parts[0] == "concept_edit" and parts[1] in ALLOWED else None


def test_allowed_import_matrix():
    bad = []
    for path, mod, is_pkg in _modules():
        src = _layer(mod)
        if src is None:  # concept_edit/__init__.py: lazy names only
            continue
        for name in _imports(path, mod, is_pkg):
            dst = _layer(name)
            if dst is None or not name.startswith("concept_edit."):
                continue
            if dst not in ALLOWED[src]:
                bad.append(f"{mod} imports {name} ({src} -> {dst})")
            if src == "methods" and dst == "methods":
                a, b = mod.split("."), name.split(".")
                if len(a) > 2 and len(b) > 2 and a[2] != b[2]:
                    bad.append(f"{mod} imports another method: {name}")
    assert not bad, "\n".join(bad)


def test_package_init_is_light():
    src = open(os.path.join(PKG, "__init__.py")).read()
    assert "import torch" not in src and "from .core" not in src


def test_help_and_argument_errors_import_no_torch():
    code = ("import sys\nfrom concept_edit.cli.main import main\n"
            "for argv in (['--help'], ['uce', '--help'], ['toyworld', 'train', '--help'], ['generate', '--bogus'],"
            " ['slider', 'grid', '--help'], ['esd', '--help']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\n"
            "assert 'torch' not in sys.modules and 'diffusers' not in sys.modules, 'heavy import'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
