"""The package layout (issue 11): the import graph points one way, and modules stay a size a reader can hold.

* The core (every module of `rlp_trl/` outside `rlp_trl/tools/`) never imports `rlp_trl.tools`, neither at the top
  of a module nor lazily inside a function, absolute or relative; the tools (console scripts, the embedded assets)
  import the core.
* No module of `rlp_trl/` is over `MAX_LINES` lines unless one of its first 30 lines is a comment `# size: <why>`.

Both read the source with `ast` / line counts only: nothing is imported.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "rlp_trl")
TOOLS = "rlp_trl.tools"
MAX_LINES = 400
SIZE_COMMENT_LINES = 30


def package_modules(package_dir: str = PACKAGE) -> list[str]:
    """Every .py file under the package (sorted, absolute paths)."""
    out = []
    for folder, dirs, files in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        out += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return out


def module_name(path: str, root: str = ROOT) -> str:
    """`rlp_trl/teacher/full.py` -> `rlp_trl.teacher.full`; `rlp_trl/tools/__init__.py` -> `rlp_trl.tools`."""
    parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_tool(name: str) -> bool:
    return name == TOOLS or name.startswith(TOOLS + ".")


def imported_modules(source: str, name: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in `source`, anywhere in it (functions, classes, `if` blocks),
    including `importlib.import_module("...")` / `__import__("...")` of a literal name.

    Relative imports are resolved against the module's package; `from X import y` yields both `X` and `X.y` (y may
    be a submodule: `from . import tools`)."""
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level - 1 <= len(package) else []
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names if alias.name != "*"]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))  # importlib.import_module("rlp_trl.tools.x")
    return found


def core_imports_of_tools(package_dir: str = PACKAGE, root: str = ROOT) -> list[str]:
    """`path:line imports X` for every import statement of a core module that imports rlp_trl.tools."""
    problems = {}
    for path in package_modules(package_dir):
        name = module_name(path, root)
        if is_tool(name):
            continue
        with open(path, encoding="utf-8") as f:
            source = f.read()
        for line, module in imported_modules(source, name, os.path.basename(path) == "__init__.py"):
            where = f"{os.path.relpath(path, root)}:{line}"
            if is_tool(module) and where not in problems:
                problems[where] = f"{where} imports {module}"
    return sorted(problems.values())


def oversized_modules(package_dir: str = PACKAGE, root: str = ROOT, limit: int = MAX_LINES) -> list[str]:
    """`path: N lines` for every module over `limit` lines without a `# size: <why>` comment in its first lines."""
    problems = []
    for path in package_modules(package_dir):
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
        explained = any(line.lstrip().startswith("# size: ") and line.split("# size: ", 1)[1].strip()
                        for line in lines[:SIZE_COMMENT_LINES])
        if len(lines) > limit and not explained:
            problems.append(f"{os.path.relpath(path, root)}: {len(lines)} lines")
    return problems


def test_the_core_never_imports_the_tools():
    problems = core_imports_of_tools()
    assert not problems, (
        "the core imports the tools (rlp_trl/tools/ imports the core, never the reverse; move what the core needs "
        "into the core):\n" + "\n".join(problems)
    )


def test_modules_are_at_most_400_lines_unless_a_comment_says_why():
    problems = oversized_modules()
    assert not problems, (
        f"modules over {MAX_LINES} lines (split them, or say why in a '# size: ...' comment in the first "
        f"{SIZE_COMMENT_LINES} lines):\n" + "\n".join(problems)
    )


# ---------------------------------------------------------------------------------- the checks can fail
def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


@pytest.mark.parametrize("module, source", [
    ("rlp_trl/core.py", "from .tools import eval\n"),
    ("rlp_trl/core.py", "from . import tools\n"),
    ("rlp_trl/core.py", "def f():\n    from rlp_trl.tools.train import load_documents\n"),
    ("rlp_trl/core.py", "import rlp_trl.tools.launch as launch\n"),
    ("rlp_trl/sub/part.py", "class A:\n    def f(self):\n        from ..tools.assets import default_model_path\n"),
    ("rlp_trl/sub/__init__.py", "from ..tools import stats\n"),
    ("rlp_trl/core.py", "import importlib\n\ndef f():\n    return importlib.import_module('rlp_trl.tools.bench')\n"),
])
def test_an_import_of_the_tools_by_the_core_is_found(tmp_path, module, source):
    _write(str(tmp_path / "rlp_trl" / "__init__.py"), "")
    _write(str(tmp_path / "rlp_trl" / "tools" / "__init__.py"), "")
    _write(str(tmp_path / "rlp_trl" / "tools" / "eval.py"), "from ..data import x\nfrom . import stats\n")  # allowed
    _write(str(tmp_path / module), "import os\n\n" + source)
    problems = core_imports_of_tools(str(tmp_path / "rlp_trl"), str(tmp_path))
    assert len(problems) == 1 and problems[0].startswith(module + ":"), problems
    assert "rlp_trl.tools" in problems[0]


def test_relative_imports_inside_the_core_are_not_tools(tmp_path):
    _write(str(tmp_path / "rlp_trl" / "__init__.py"), "from .config import tools_count\n")
    _write(str(tmp_path / "rlp_trl" / "sub" / "tools.py"), "")
    _write(str(tmp_path / "rlp_trl" / "sub" / "part.py"), "from .tools import x\nfrom . import tools\n")  # sub.tools
    assert core_imports_of_tools(str(tmp_path / "rlp_trl"), str(tmp_path)) == []


def test_an_oversized_module_is_found_unless_it_says_why(tmp_path):
    body = "x = 1\n" * (MAX_LINES + 1)
    _write(str(tmp_path / "rlp_trl" / "small.py"), "x = 1\n" * MAX_LINES)
    _write(str(tmp_path / "rlp_trl" / "tools" / "big.py"), body)
    _write(str(tmp_path / "rlp_trl" / "explained.py"), '"""Doc."""\n# size: one table of constants\n' + body)
    _write(str(tmp_path / "rlp_trl" / "empty_reason.py"), "# size: \n" + body)
    problems = oversized_modules(str(tmp_path / "rlp_trl"), str(tmp_path))
    assert problems == [f"rlp_trl{os.sep}empty_reason.py: {MAX_LINES + 2} lines",
                        f"rlp_trl{os.sep}tools{os.sep}big.py: {MAX_LINES + 1} lines"], problems
