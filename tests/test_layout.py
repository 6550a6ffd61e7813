"""The package layout the code promises: dependencies point down only (nodes → vdm_app → vdm_core), no
module over 400 lines in the library, and vdm_core's module list says what is in the folder."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def imports(path: Path) -> set[str]:
    """Top-level package names a module imports (relative imports resolved against the pack's layout)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                out.add(node.module.split(".")[0])
            else:  # ..vdm_core / ..vdm_app from a sub-package, or a sibling module (.x)
                parts = (node.module or "").split(".")
                out.add(parts[0] if node.level > 1 else path.parent.name)
    return out


@pytest.mark.parametrize("package, forbidden", [
    ("vdm_core", {"vdm_app", "nodes", "comfy", "comfy_api", "folder_paths"}),
    ("vdm_app", {"nodes", "comfy", "comfy_api", "folder_paths"}),
])
def test_dependencies_point_down(package, forbidden):
    for path in sorted((ROOT / package).glob("*.py")):
        assert not imports(path) & forbidden, (path.name, imports(path) & forbidden)


def test_library_modules_stay_small():
    sizes = {p.name: len(p.read_text().splitlines()) for p in (ROOT / "vdm_core").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 400} == {}


def test_vdm_core_docstring_lists_every_module():
    import vdm_core

    listed = set(re.findall(r"``(\w+)``", vdm_core.__doc__))
    modules = {p.stem for p in (ROOT / "vdm_core").glob("*.py") if p.stem != "__init__"}
    assert modules <= listed, modules - listed
