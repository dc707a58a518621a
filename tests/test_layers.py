"""The architecture as a rule: learn (torch) <- search (the Optuna service) <- show (readers) <- cli,
nothing imports upward, and importing a module changes nothing outside it."""

import ast
import subprocess
import sys

from conftest import ROOT

PACKAGE = ROOT / "tuner"


def runtime_imports(path) -> set[str]:
    """The tuner modules a file imports when it runs (``if TYPE_CHECKING:`` blocks left out)."""
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("tuner")}


def layer_imports(layer: str) -> dict[str, set[str]]:
    return {p.name: runtime_imports(p) for p in (PACKAGE / layer).glob("*.py")}


def test_learn_imports_neither_search_nor_show():
    for name, imports in layer_imports("learn").items():
        assert not {m for m in imports if m.startswith(("tuner.search", "tuner.show", "tuner.cli"))}, name


def test_search_imports_no_show_and_learn_only_where_a_worker_runs_a_trial():
    for name, imports in layer_imports("search").items():
        assert not {m for m in imports if m.startswith(("tuner.show", "tuner.cli"))}, name
        if name not in ("workers.py", "lifecycle.py"):
            assert not {m for m in imports if m.startswith("tuner.learn")}, name


def test_show_does_not_import_the_cli():
    for name, imports in layer_imports("show").items():
        assert not {m for m in imports if m.startswith("tuner.cli")}, name


def fresh(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()


def test_the_study_file_and_the_study_layer_load_no_torch():
    code = ("import sys, tuner.search.config, tuner.search.study, tuner.search.storage, tuner.search.launch, "
            "tuner.search.liveness, tuner.cli, tuner.keys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    assert fresh(code) == "[]"


def test_what_the_read_commands_import_loads_no_torch():
    code = ("import sys, tuner.show.summary, tuner.show.export, tuner.learn.weights; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    assert fresh(code) == "[]"


def test_importing_every_module_changes_no_global_setting():
    modules = sorted(f"tuner.{p.relative_to(PACKAGE).with_suffix('').as_posix().replace('/', '.')}"
                     for p in PACKAGE.rglob("*.py") if p.name not in ("__main__.py",))
    # third-party packages set their own filters when first imported: import them before the snapshot
    code = ("import logging, warnings, matplotlib, optuna, torch, sklearn.metrics, PIL.Image, rich, typer, sqlalchemy\n"
            "import matplotlib.figure, matplotlib.backends.backend_agg, optuna_dashboard\n"
            "before = (list(warnings.filters), optuna.logging.get_verbosity(), matplotlib.get_backend(), "
            "logging.getLogger().level)\n"
            + "".join(f"import {m}\n" for m in modules)
            + "after = (list(warnings.filters), optuna.logging.get_verbosity(), matplotlib.get_backend(), logging.getLogger().level)\n"
            "print(before == after)")
    assert fresh(code) == "True"
