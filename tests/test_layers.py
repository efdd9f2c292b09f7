"""Apps form layers: a module never imports an app above its own, not even lazily.

The order is the one line of README.md's Layout section written as `config < accounts < ... < console`, parsed
here, so the README and this test cannot disagree. Every .py file of every app in that order is read with `ast`
(nothing is imported or executed) and every import counts: module level, inside a function, under
`TYPE_CHECKING`, `import a.b`, `from a import b`, relative imports (resolved against the file's package), and
`importlib.import_module`, `import_string` or `__import__` called with a literal string.

Not imports, so not checked: model relations named by string (`"agents.Run"`), ORM lookups across them
(`agent__name`), URL `include("runner.api.urls")` strings, dotted paths in settings, and a migration's
`dependencies` (strings too). Migrations are read like every other module: a data migration that imported another
app's code would run that code at `migrate` time, so it obeys the same order. bench/ and tests/ are not apps.
"""

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

ROOT = Path(__file__).resolve().parent.parent
# One line in backticks, names joined by "<": the only such line in the README.
ORDER_LINE = re.compile(r"`\s*([a-z_][a-z0-9_]*(?:\s*<\s*[a-z_][a-z0-9_]*)+)\s*`")
DYNAMIC_IMPORTS = {"import_module", "import_string", "__import__"}


def layer_order(readme: Path) -> list[str]:
    """The apps from lowest to highest, from the README's single `a < b < c` line (an AssertionError otherwise)."""
    lines = [m.group(1) for m in ORDER_LINE.finditer(readme.read_text(encoding="utf-8"))]
    assert len(lines) == 1, f"{readme.name} must name the layer order on exactly one `a < b < c` line; found {lines}"
    order = [name.strip() for name in lines[0].split("<")]
    assert len(set(order)) == len(order), f"an app appears twice in the layer order: {order}"
    return order


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    module: str


def _package(path: Path, root: Path) -> list[str]:
    """The dotted package a module belongs to, as parts: what a relative import counts its dots from."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return parts[:-1]  # a package's __init__ and a plain module both live in their directory's package


def module_imports(path: Path, root: Path) -> list[Import]:
    """Every module `path` imports, wherever the statement sits, with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [Import(path, node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _package(path, root)
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            found.append(Import(path, node.lineno, module))
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if name in DYNAMIC_IMPORTS and isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.append(Import(path, node.lineno, first.value))
    return sorted(found, key=lambda item: item.line)


def upward_imports(root: Path, order: list[str]) -> list[str]:
    """`file:line imports module (app above app)` for each import in an app of `order` that goes up the order."""
    rank = {app: position for position, app in enumerate(order)}
    problems = []
    for app in order:
        for path in sorted((root / app).rglob("*.py")):
            for found in module_imports(path, root):
                target = found.module.split(".")[0]
                if target in rank and rank[target] > rank[app]:
                    where = path.relative_to(root)
                    problems.append(f"{where}:{found.line} imports {found.module} ({target} is above {app})")
    return problems


def test_the_readme_order_names_every_app_of_the_project():
    """An app missing from the order would go unchecked, so every installed app of this repository is on the line."""
    order = layer_order(ROOT / "README.md")
    local_apps = {app for app in settings.INSTALLED_APPS if (ROOT / app / "apps.py").exists()}
    assert local_apps, "no local app found in INSTALLED_APPS"
    assert not local_apps - set(order), f"apps missing from the README's layer order: {sorted(local_apps - set(order))}"
    assert order[0] == "config", "config (settings, errors, db, telemetry set-up) is below every app"


def test_no_module_imports_an_app_above_its_own():
    problems = upward_imports(ROOT, layer_order(ROOT / "README.md"))
    assert not problems, "imports going up the README's layer order:\n" + "\n".join(problems)


def test_the_checker_reports_upward_imports_wherever_they_sit(tmp_path):
    """A synthetic tree: module-level, lazy, TYPE_CHECKING and import_module imports upward are all reported;
    downward imports, relative imports within the app and model relations named by string are not."""
    (tmp_path / "README.md").write_text("## Layout\n\n`low < high`\n")
    for package in ("low", "low/sub", "high"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "high" / "models.py").write_text("from low.records import Record\n")
    (tmp_path / "low" / "records.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from django.db import models\n"
        "import high.models\n"  # line 3: module level
        "if TYPE_CHECKING:\n"
        "    from high.models import Thing\n"  # line 5: type checking only
        "def later():\n"
        "    from high import models as m\n"  # line 7: lazy
        "    return importlib.import_module('high.tasks')\n"  # line 8: dynamic, literal string
        "class Record(models.Model):\n"
        "    owner = models.ForeignKey('high.Thing', on_delete=models.CASCADE)\n"  # a string relation: not an import
    )
    (tmp_path / "low" / "sub" / "deep.py").write_text("from .. import records\nfrom ..records import Record\n")

    order = layer_order(tmp_path / "README.md")
    problems = upward_imports(tmp_path, order)

    assert order == ["low", "high"]
    assert [problem.split(" imports ")[0] for problem in problems] == [
        "low/records.py:3",
        "low/records.py:5",
        "low/records.py:7",
        "low/records.py:8",
    ]
    assert all("(high is above low)" in problem for problem in problems)
    deep = module_imports(tmp_path / "low" / "sub" / "deep.py", tmp_path)
    assert [found.module for found in deep] == ["low", "low.records"]


def test_the_order_line_must_be_unique(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("`a < b`\n\nand later `b < a`\n")
    try:
        layer_order(readme)
    except AssertionError as exc:
        assert "exactly one" in str(exc)
    else:
        raise AssertionError("two order lines were accepted")
