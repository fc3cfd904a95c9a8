"""Mutation testing for the numeric cores: make one small change at a time, run the module's own tests.

    python tools/mutate.py sanitize/intervals.py            # every mutant of one module; prints the survivors
    python tools/mutate.py sanitize/intervals.py --list     # the mutants and their keys, nothing run
    python tools/mutate.py sanitize/intervals.py --only "normal_quantile:"   # the mutants whose key contains this
    python tools/mutate.py --all                            # every module in the config, one after another

The changes (the operators a wrong number usually comes from): ``<``↔``<=``, ``>``↔``>=``, ``==``↔``!=``,
``+``↔``-`` (also ``+=``↔``-=``), ``&``↔``|``, ``and``↔``or``, ``min``↔``max`` (also ``minimum``/``maximum``,
``argmin``/``argmax``, ``fmin``/``fmax``, ``nanmin``/``nanmax``), ``True``↔``False``, and each int or float
constant + 1 and - 1. Annotations, f-strings, ``raise`` statements and ``logger.*`` calls are not mutated: they
carry messages, not results.

Each mutant has a key, ``"<function>: <code before> -> <code after>"`` (``#2``, ``#3`` for repeats in one function),
that does not move when lines do. ``tools/mutation.toml`` lists, per module, the test files that are its own tests
and the mutants that cannot change a result (equivalent mutants), each with why. The score is killed / (all -
equivalent). A mutant marked equivalent that a test kills, or an entry that matches no mutant, is reported so the
list cannot rot.

Nothing is written to the source tree: a forked child compiles the mutated module in memory, installs it in front
of the import system and runs pytest (``-x``, quickest tests first as timed by a clean run, no cache, no Hypothesis
database) on the module's tests; the parent kills a child that outlives the timeout (a mutant that loops forever
counts as killed). Tests that run the code in another process do not see the mutant, so list in-process tests.
POSIX only (fork). Not part of CI: a module takes minutes.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import signal
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# The tests are numeric and single-threaded; forked children must not inherit busy BLAS thread pools.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "tools" / "mutation.toml"

COMPARE_SWAP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
                ast.NotEq: ast.Eq}
BINOP_SWAP = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.BitAnd: ast.BitOr, ast.BitOr: ast.BitAnd}
BOOLOP_SWAP = {ast.And: ast.Or, ast.Or: ast.And}
NAME_SWAP = {}
for _a, _b in [("min", "max"), ("minimum", "maximum"), ("argmin", "argmax"), ("fmin", "fmax"),
               ("nanmin", "nanmax")]:
    NAME_SWAP[_a], NAME_SWAP[_b] = _b, _a


@dataclass
class Mutant:
    key: str
    line: int
    index: int  # position of the mutated node in ast.walk order
    change: str  # how to mutate that node, see _apply
    equivalent: str | None = None  # why, from the config
    outcome: str = ""  # killed | survived | timeout | error (the tests could not run: counted as killed)


@dataclass
class ModuleConfig:
    path: str
    tests: list[str]
    equivalent: dict[str, str] = field(default_factory=dict)


# --- finding mutants ---------------------------------------------------------------------------------------------


def _skipped_subtrees(tree: ast.AST) -> set[int]:
    """ids of nodes that carry messages or types, not results: never mutated."""
    skip: set[int] = set()

    def mark(node: ast.AST | None) -> None:
        if node is not None:
            skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(tree):
        if isinstance(node, (ast.JoinedStr, ast.Raise)) or _is_log_call(node):
            mark(node)
        elif isinstance(node, ast.AnnAssign):
            mark(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            mark(node.returns)
            for arg in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                        node.args.kwarg]:
                if arg is not None:
                    mark(arg.annotation)
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            mark(node)  # docstrings
    return skip


def _is_log_call(node: ast.AST) -> bool:
    func = node.func if isinstance(node, ast.Call) else None
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("logger",
                                                                                                      "logging")


def _qualnames(tree: ast.AST) -> dict[int, str]:
    """id(node) -> dotted name of the innermost function or class holding it ("<module>" at top level)."""
    names: dict[int, str] = {}

    def visit(node: ast.AST, scope: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = scope
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = child.name if scope == "<module>" else f"{scope}.{child.name}"
            names[id(child)] = inner
            visit(child, inner)

    names[id(tree)] = "<module>"
    visit(tree, "<module>")
    return names


def _changes(node: ast.AST) -> list[str]:
    """The mutations that apply to this node, as change codes for _apply."""
    if isinstance(node, ast.Compare):
        return [f"cmp{i}" for i, op in enumerate(node.ops) if type(op) in COMPARE_SWAP]
    if isinstance(node, (ast.BinOp, ast.AugAssign)) and type(node.op) in BINOP_SWAP:
        return ["op"]
    if isinstance(node, ast.BoolOp):
        return ["op"]
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool):
            return ["not"]
        if isinstance(node.value, (int, float)):
            return ["+1", "-1"]
    if isinstance(node, ast.Name) and node.id in NAME_SWAP:
        return ["name"]
    if isinstance(node, ast.Attribute) and node.attr in NAME_SWAP:
        return ["name"]
    return []


def _apply(node: ast.AST, change: str) -> None:
    """Mutate `node` in place."""
    if change.startswith("cmp"):
        i = int(change[3:])
        node.ops[i] = COMPARE_SWAP[type(node.ops[i])]()
    elif change == "op":
        node.op = (BOOLOP_SWAP if isinstance(node, ast.BoolOp) else BINOP_SWAP)[type(node.op)]()
    elif change == "not":
        node.value = not node.value
    elif change in ("+1", "-1"):
        value = node.value + int(change)
        node.value = round(value, 12) if isinstance(value, float) else value
    elif isinstance(node, ast.Name):
        node.id = NAME_SWAP[node.id]
    else:
        node.attr = NAME_SWAP[node.attr]


def _shown(node: ast.AST, parents: dict[int, ast.AST]) -> ast.AST:
    """The code that names a mutation: a constant or a name with the expression around it (when short), an
    augmented assignment without its right-hand side, any other node itself."""
    if isinstance(node, ast.AugAssign):
        return ast.AugAssign(target=node.target, op=node.op, value=ast.Name(id="..."))
    parent = parents.get(id(node))
    small_parent = isinstance(parent, ast.expr) and len(ast.unparse(parent)) <= 80
    if isinstance(node, (ast.Constant, ast.Name, ast.Attribute)) and small_parent:
        return parent
    return node


def find_mutants(source: str) -> list[Mutant]:
    tree = ast.parse(source)
    skip = _skipped_subtrees(tree)
    scope = _qualnames(tree)
    parents = {id(child): node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    nodes = [(i, n) for i, n in enumerate(ast.walk(tree)) if hasattr(n, "lineno") and id(n) not in skip]
    nodes.sort(key=lambda item: (item[1].lineno, item[1].col_offset, item[0]))
    mutants: list[Mutant] = []
    seen: Counter[str] = Counter()
    for index, node in nodes:
        for change in _changes(node):
            shown = _shown(node, parents)
            before = ast.unparse(shown)
            saved = {k: list(v) if isinstance(v, list) else v for k, v in vars(node).items()}
            _apply(node, change)  # in place, so that the change shows inside the parent; undone below
            after = ast.unparse(_shown(node, parents))
            vars(node).update(saved)
            key = f"{scope[id(node)]}: {before} -> {after}"
            seen[key] += 1
            if seen[key] > 1:
                key = f"{key} #{seen[key]}"
            mutants.append(Mutant(key=key, line=node.lineno, index=index, change=change))
    return mutants


def mutated_code(source: str, filename: str, mutant: Mutant):
    tree = ast.parse(source)
    node = next(n for i, n in enumerate(ast.walk(tree)) if i == mutant.index)
    _apply(node, mutant.change)
    return compile(ast.fix_missing_locations(tree), filename, "exec")


# --- running one mutant ------------------------------------------------------------------------------------------


class _MutantFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports `name` from the given code object instead of its file."""

    def __init__(self, name: str, code) -> None:
        self.name, self.code = name, code

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        real = importlib.machinery.PathFinder.find_spec(fullname, path)
        return importlib.util.spec_from_file_location(fullname, real.origin, loader=self)

    def create_module(self, spec):
        return None

    def exec_module(self, module) -> None:
        exec(self.code, module.__dict__)


class _FastestFirst:
    """pytest plugin: the baseline run writes each test's duration to `path`; mutant runs read it and run the
    quickest tests first, so that a killed mutant (``-x``) dies as early as it can."""

    def __init__(self, path: Path, record: bool) -> None:
        self.path, self.record, self.durations = path, record, {}

    def pytest_collection_modifyitems(self, items) -> None:
        if not self.record and self.path.exists():
            known = json.loads(self.path.read_text())
            items.sort(key=lambda item: known.get(item.nodeid, 0.0))

    def pytest_runtest_logreport(self, report) -> None:
        if self.record:
            self.durations[report.nodeid] = self.durations.get(report.nodeid, 0.0) + report.duration

    def pytest_sessionfinish(self) -> None:
        if self.record:
            self.path.write_text(json.dumps(self.durations))


def _child(module_name: str, code, tests: list[str], durations: Path) -> None:
    """In the forked child: install the mutant (none for the baseline), run the tests, exit with pytest's code.
    Never returns."""
    try:
        os.setpgid(0, 0)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        sys.dont_write_bytecode = True
        if code is not None:
            sys.meta_path.insert(0, _MutantFinder(module_name, code))
        import hypothesis
        import pytest

        hypothesis.settings.register_profile("mutate", database=None, deadline=None)
        hypothesis.settings.load_profile("mutate")
        args = [*tests, "-x", "-q", "-p", "no:cacheprovider", "-o", "addopts=", "--no-header"]
        os._exit(int(pytest.main(args, plugins=[_FastestFirst(durations, record=code is None)])))
    except BaseException:  # a child must never fall back into the parent's loop
        os._exit(99)


def _start(module_name: str, code, tests: list[str], durations: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(module_name, code, tests, durations)
    return pid


def _wait(pid: int, deadline: float) -> tuple[int | None, bool]:
    """(exit code, finished) of child `pid`; kills its process group once past `deadline`."""
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), True
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None, False
        time.sleep(0.02)


def _outcome(rc: int | None, finished: bool) -> str:
    if not finished:
        return "timeout"
    if rc == 0:
        return "survived"
    if rc == 1:
        return "killed"
    if rc == 5:
        raise SystemExit("pytest collected no tests: check the test paths in the config")
    return "error"  # collection failed, the import of the mutant raised, ...


def run_module(cfg: ModuleConfig, *, only: str | None, jobs: int, timeout: float | None,
               skip_equivalent: bool) -> list[Mutant]:
    """Run the chosen mutants of one module; returns them with their outcomes."""
    filename = str(REPO / cfg.path)
    source = Path(filename).read_text()
    module_name = ".".join(Path(cfg.path).with_suffix("").parts)
    tests = [str(REPO / t) for t in cfg.tests]
    mutants = find_mutants(source)
    for m in mutants:
        m.equivalent = cfg.equivalent.get(m.key)
    stale = sorted(set(cfg.equivalent) - {m.key for m in mutants})
    chosen = [m for m in mutants if (only is None or only in m.key) and not (skip_equivalent and m.equivalent)]

    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        durations = Path(tmp) / "durations.json"
        start = time.monotonic()
        rc, _ = _wait(_start(module_name, None, tests, durations), start + 600)
        baseline = time.monotonic() - start
        if rc != 0:
            raise SystemExit(f"{cfg.path}: the tests fail without any mutation (pytest exit {rc}); fix them first")
        limit = timeout or max(10.0, 3 * baseline + 5)
        print(f"{cfg.path}: {len(mutants)} mutants, running {len(chosen)}; tests take {baseline:.1f}s, "
              f"timeout {limit:.0f}s", flush=True)
        _run_mutants(chosen, lambda m: mutated_code(source, filename, m), module_name, tests, durations, jobs, limit)
    for key in stale:
        print(f"  WARNING equivalent entry matches no mutant (remove or update it): {key}")
    return chosen


def _run_mutants(chosen: list[Mutant], compile_mutant, module_name: str, tests: list[str], durations: Path,
                 jobs: int, limit: float) -> None:
    """Up to `jobs` forked children at a time; sets each mutant's outcome and prints it."""
    pending = list(chosen)
    running: dict[int, tuple[Mutant, float]] = {}
    try:
        while pending or running:
            while pending and len(running) < jobs:
                m = pending.pop(0)
                running[_start(module_name, compile_mutant(m), tests, durations)] = (m, time.monotonic() + limit)
            for pid, (m, deadline) in list(running.items()):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    m.outcome = _outcome(os.waitstatus_to_exitcode(status), True)
                elif time.monotonic() > deadline:
                    m.outcome = _outcome(*_wait(pid, 0))
                else:
                    continue
                del running[pid]
                mark = "  (marked equivalent)" if m.equivalent else ""
                print(f"  {m.outcome:8s} line {m.line:4d}  {m.key}{mark}", flush=True)
            time.sleep(0.02)
    finally:  # interrupted: take the children (and anything they started) down too
        for pid in running:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def summary(path: str, ran: list[Mutant]) -> dict:
    killed = [m for m in ran if m.outcome != "survived"]
    equivalent = [m for m in ran if m.equivalent]
    counted = [m for m in ran if not m.equivalent]
    counted_killed = [m for m in counted if m.outcome != "survived"]
    survivors = [m for m in counted if m.outcome == "survived"]
    wrongly_equivalent = [m for m in equivalent if m.outcome != "survived"]
    score = len(counted_killed) / len(counted) if counted else 1.0
    print(f"\n{path}: killed {len(counted_killed)} of {len(counted)} non-equivalent mutants ({100 * score:.1f}%); "
          f"{len(equivalent)} marked equivalent; {len(killed)} of {len(ran)} killed in all")
    for m in survivors:
        print(f"  SURVIVED line {m.line}: {m.key}")
    for m in wrongly_equivalent:
        print(f"  WARNING marked equivalent but {m.outcome}: {m.key}")
    return {"module": path, "mutants": len(ran), "equivalent": len(equivalent), "killed": len(counted_killed),
            "non_equivalent": len(counted), "score": score, "survivors": [m.key for m in survivors],
            "marked_equivalent_but_killed": [m.key for m in wrongly_equivalent]}


def load_config(path: Path) -> dict[str, ModuleConfig]:
    raw = tomllib.loads(path.read_text())
    modules = {}
    for entry in raw.get("module", []):
        equivalent = {}
        for e in entry.get("equivalent", []):
            if not e.get("why"):
                raise SystemExit(f"{path}: equivalent mutant {e.get('mutant')!r} needs a 'why'")
            equivalent[e["mutant"]] = e["why"]
        modules[entry["path"]] = ModuleConfig(entry["path"], list(entry["tests"]), equivalent)
    return modules


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("modules", nargs="*", help="module paths as listed in the config")
    parser.add_argument("--all", action="store_true", help="every module in the config")
    parser.add_argument("--list", action="store_true", help="print the mutants and their keys; run nothing")
    parser.add_argument("--only", help="run only the mutants whose key contains this text")
    parser.add_argument("--skip-equivalent", action="store_true", help="do not run mutants marked equivalent")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutants run at once (default 1)")
    parser.add_argument("--timeout", type=float, help="seconds per mutant (default 3x the clean run + 5)")
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--json", type=Path, help="write the scores here")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    names = list(config) if args.all else args.modules
    unknown = [n for n in names if n not in config]
    if not names or unknown:
        parser.error(f"name modules from {args.config.name}: {', '.join(config)}" +
                     (f" (not there: {', '.join(unknown)})" if unknown else ""))
    if args.list:
        for name in names:
            for m in find_mutants((REPO / name).read_text()):
                mark = "  [equivalent]" if m.key in config[name].equivalent else ""
                print(f"{name}:{m.line}  {m.key}{mark}")
        return 0
    # Imported once here, shared by every forked child; never the package under test.
    import hypothesis  # noqa: F401
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import scipy.special
    import scipy.stats  # noqa: F401

    os.chdir(REPO)
    sys.path.insert(0, str(REPO))  # the package next to this file, also when another copy is installed
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    results = []
    for name in names:
        ran = run_module(config[name], only=args.only, jobs=args.jobs, timeout=args.timeout,
                         skip_equivalent=args.skip_equivalent)
        results.append(summary(name, ran))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0 if all(not r["survivors"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
