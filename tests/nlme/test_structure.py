"""The shape of ``bayes_ude/nlme`` (docs/design.md, "nlme/ in layers"), read from the source
with ``ast``, nothing imported: modules a newcomer reads top to bottom (under 400 lines),
functions under 100 lines of code (their docstrings not counted), no import cycle between
the package's modules, and no function-level import but the two documented lazy loads of
the Bayesian layer."""

import ast
import functools
from pathlib import Path

import bayes_ude

NLME = Path(bayes_ude.__file__).parent / "nlme"
MAX_MODULE_LINES = 400
MAX_FUNCTION_CODE_LINES = 100
# the documented lazy loads: NumPyro, BlackJAX, ArviZ only for Bayesian fits; diffrax only
# for an ODE model (warfarin's); matplotlib in the command's own process only when its
# figure process could not start
LAZY_IMPORTS = {("_fit.py", "fit"), ("_command_run.py", "_run"),
                ("_command_data.py", "_build_model"), ("_figure_worker.py", "wait")}


@functools.cache
def _modules():
    # parsed once: the cycle test used to parse the whole package once per module (35 s)
    return {p.name: ast.parse(p.read_text()) for p in sorted(NLME.glob("*.py"))}


def _functions(tree):
    return [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]


def _code_lines(fn) -> int:
    lines = fn.end_lineno - fn.lineno + 1
    doc = fn.body[0] if fn.body else None
    if isinstance(doc, ast.Expr) and isinstance(doc.value, ast.Constant) and isinstance(
            doc.value.value, str):
        lines -= doc.end_lineno - doc.lineno + 1
    return lines


def test_modules_and_functions_are_short():
    long_modules = {name: (NLME / name).read_text().count("\n")
                    for name in _modules()}
    assert {k: v for k, v in long_modules.items() if v > MAX_MODULE_LINES} == {}
    long_functions = {f"{name}:{fn.name}": _code_lines(fn)
                      for name, tree in _modules().items() for fn in _functions(tree)
                      if _code_lines(fn) > MAX_FUNCTION_CODE_LINES}
    assert long_functions == {}


def test_only_the_documented_lazy_imports():
    found = set()
    for name, tree in _modules().items():
        for fn in _functions(tree):
            if any(isinstance(node, ast.Import | ast.ImportFrom) for stmt in fn.body
                   for node in ast.walk(stmt)):
                found.add((name, fn.name))
    assert found == LAZY_IMPORTS


def test_no_import_cycle_between_modules():
    graph = {}
    for name, tree in _modules().items():
        deps = set()
        for node in tree.body:  # module level only: the lazy loads are the exceptions
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0] + ".py")
                else:
                    deps.update(f"{a.name}.py" for a in node.names)
        graph[name] = deps & set(_modules()) - {"__init__.py"}
    graph.pop("__init__.py")
    done, stack = set(), []

    def visit(module):
        assert module not in stack, f"import cycle: {' -> '.join(stack + [module])}"
        if module in done:
            return
        stack.append(module)
        for dep in sorted(graph[module]):
            visit(dep)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    # the layers really are layered: the data layer imports no model, the model no result
    assert not graph["_data.py"] & {"_model.py", "_pk.py", "_results.py"}
    assert "_fit.py" not in graph["_results.py"] | graph["_likelihood.py"]
