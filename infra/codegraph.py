"""What a Lambda handler's code can reach, read from the source (AST), never by importing it.

Two views of one handler (``services/<name>/handler.py``):

- :func:`import_closure`: every first-party module it loads (module-level imports, transitively, plus the
  imports inside the functions it can reach; ``if TYPE_CHECKING:`` blocks excluded), and the third-party
  top-level packages those import. The packager ships exactly these.
- :func:`reachable_code`: the functions and classes its handler module can reach by name, following
  imports into ``bayroute``/``services``; a reachable class brings all its methods and bases. Module-level
  statements of a module whose members are reached count too (they run at import). The IAM check reads the
  AWS calls in this code only, so that a helper the function never uses (another handler's adapter in the
  same module) does not count against its policy.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = ("bayroute", "services")


class CodeGraphError(ValueError):
    """A handler or module cannot be found or parsed."""


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    tree: ast.Module

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


@cache
def module_path(name: str, root: Path = REPO_ROOT) -> Path | None:
    """The source file of first-party module ``name`` (``a.b`` -> ``a/b.py`` or ``a/b/__init__.py``)."""
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def load_module(name: str, root: Path = REPO_ROOT) -> Module:
    path = module_path(name, root)
    if path is None:
        raise CodeGraphError(f"no first-party module {name!r} under {root}")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as exc:
        raise CodeGraphError(f"cannot parse {path}: {exc}") from exc
    return Module(name=name, path=path, tree=tree)


def handler_module(function: str) -> str:
    return f"services.{function}.handler"


def _is_first_party(name: str) -> bool:
    return name.split(".", 1)[0] in FIRST_PARTY


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_runtime(node: ast.AST) -> Iterator[ast.AST]:
    """``ast.walk`` that skips ``if TYPE_CHECKING:`` blocks (their imports never run)."""
    stack = [node]
    while stack:
        current = stack.pop()
        yield current
        for child in ast.iter_child_nodes(current):
            if not _is_type_checking_block(child):
                stack.append(child)


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.name.split(".")
    if not module.is_package:
        package = package[:-1]
    package = package[: len(package) - (node.level - 1)]
    return ".".join([*package, *([node.module] if node.module else [])])


@dataclass(frozen=True)
class Binding:
    """What a name imported into a module stands for: a module, or a member of one."""

    module: str
    member: str | None = None


@cache
def _bindings(module: Module) -> dict[str, Binding]:
    """Names bound by the module's imports, anywhere in it (function-level imports included)."""
    bindings: dict[str, Binding] = {}
    for node in _walk_runtime(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bindings[alias.asname] = Binding(alias.name)
                else:
                    top = alias.name.split(".", 1)[0]
                    bindings[top] = Binding(top)
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(module, node)
            for alias in node.names:
                local = alias.asname or alias.name
                submodule = f"{source}.{alias.name}"
                if _is_first_party(submodule) and module_path(submodule) is not None:
                    bindings[local] = Binding(submodule)
                else:
                    bindings[local] = Binding(source, alias.name)
    return bindings


def _import_targets(module: Module, node: ast.AST) -> Iterator[str]:
    """The modules an ``import`` statement of ``module`` loads."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            yield alias.name
    elif isinstance(node, ast.ImportFrom):
        source = _absolute(module, node)
        yield source
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if _is_first_party(submodule) and module_path(submodule) is not None:
                yield submodule


def _walk_module_level(node: ast.AST) -> Iterator[ast.AST]:
    """What runs when a module is imported: everything but function bodies and ``if TYPE_CHECKING:``."""
    for child in ast.iter_child_nodes(node):
        if _is_type_checking_block(child) or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        yield child
        yield from _walk_module_level(child)


def _module_level_imports(module: Module) -> Iterator[str]:
    for node in _walk_module_level(module.tree):
        yield from _import_targets(module, node)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class ImportClosure:
    modules: frozenset[str]  # first-party modules, packages included
    third_party: frozenset[str]  # top-level import names of third-party packages (numpy, PIL, ...)
    external_modules: frozenset[str]  # the third-party modules imported, in full (aws_lambda_powertools.utilities...)


def import_closure(entry: str) -> ImportClosure:
    """Every module ``entry`` loads: module-level imports, transitively, and the imports inside the functions
    it can reach (:func:`reachable_code`), so that a function-level import in code the handler never runs (a
    CLI helper that imports the local runtime) does not drag that code's packages into the function."""
    seen: set[str] = set()
    third_party: set[str] = set()
    external: set[str] = set()
    pending = [entry]
    for module, node in reachable_code(entry).walk():
        pending.extend(_import_targets(module, node))

    def add(imported: str) -> None:
        if _is_first_party(imported):
            pending.append(imported)
            return
        top = imported.split(".", 1)[0]
        if top and top not in sys.stdlib_module_names and top != "__future__":
            third_party.add(top)
            external.add(imported)

    while pending:
        name = pending.pop()
        if not _is_first_party(name):
            add(name)
            continue
        for candidate in _with_parents(name):
            if candidate in seen or module_path(candidate) is None:
                continue
            seen.add(candidate)
            for imported in _module_level_imports(load_module(candidate)):
                add(imported)
    return ImportClosure(
        modules=frozenset(seen), third_party=frozenset(third_party), external_modules=frozenset(external)
    )


@dataclass
class ReachableCode:
    """The AST nodes a handler can run, each with the module it belongs to."""

    nodes: list[tuple[Module, ast.AST]] = field(default_factory=list)
    # Names imported from third-party packages that reachable code refers to: (package module, member).
    external_references: set[tuple[str, str]] = field(default_factory=set)

    def walk(self) -> Iterator[tuple[Module, ast.AST]]:
        for module, node in self.nodes:
            for inner in _walk_runtime(node):
                yield module, inner


@cache
def _top_level_definitions(module: Module) -> dict[str, ast.AST]:
    definitions: dict[str, ast.AST] = {}
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            definitions[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    definitions[target.id] = node
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            definitions[node.target.id] = node
    return definitions


def _module_statements(module: Module) -> Iterable[ast.AST]:
    """What runs when the module is imported, minus the bodies of its functions and classes."""
    for node in module.tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Import | ast.ImportFrom):
            continue
        if _is_type_checking_block(node):
            continue
        if isinstance(node, ast.Assign | ast.AnnAssign) and not _calls_anything(node):
            continue  # constants: resolved on demand through _top_level_definitions
        yield node


def _calls_anything(node: ast.AST) -> bool:
    return any(isinstance(inner, ast.Call) for inner in ast.walk(node))


def _class_shell(node: ast.ClassDef) -> ast.ClassDef:
    """The class without its methods: decorators, bases and class-level statements."""
    shell = ast.ClassDef(
        name=node.name,
        bases=node.bases,
        keywords=node.keywords,
        body=[item for item in node.body if not isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)],
        decorator_list=node.decorator_list,
    )
    return ast.copy_location(shell, node)


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


@cache
def reachable_code(entry: str) -> ReachableCode:
    """The code the module ``entry`` (a handler) can run, following names into first-party modules (cached:
    treat the result as read-only).

    A reachable class contributes its decorators, bases and class body at once, its special methods
    (``__init__``, ``__call__``...) too, and any other method once some reachable code uses an attribute of
    that name (``x.read(...)`` reaches every reachable class's ``read``): the receiver's type is unknown, so
    the match is by name, which over-approximates across classes but not within an unused method.
    """
    result = ReachableCode()
    visited: set[tuple[str, str]] = set()
    imported_modules: set[str] = set()
    queue: list[tuple[Module, ast.AST]] = []
    used_attributes: set[str] = set()
    waiting_methods: dict[str, list[tuple[Module, ast.AST]]] = {}

    def enter_module(name: str) -> Module | None:
        if module_path(name) is None:
            return None
        module = load_module(name)
        if name not in imported_modules:
            imported_modules.add(name)
            for statement in _module_statements(module):
                queue.append((module, statement))
        return module

    def add_class(module: Module, node: ast.ClassDef) -> None:
        queue.append((module, _class_shell(node)))
        for item in node.body:
            if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                if _is_dunder(item.name) or item.name in used_attributes:
                    queue.append((module, item))
                else:
                    waiting_methods.setdefault(item.name, []).append((module, item))

    def reach(module_name: str, member: str) -> None:
        key = (module_name, member)
        if key in visited:
            return
        visited.add(key)
        module = enter_module(module_name)
        if module is None:
            return
        definition = _top_level_definitions(module).get(member)
        if isinstance(definition, ast.ClassDef):
            add_class(module, definition)
            return
        if definition is not None:
            queue.append((module, definition))
            return
        binding = _bindings(module).get(member)  # re-exported from another module
        if binding is not None:
            follow(binding, None)

    def follow(binding: Binding, attribute: str | None) -> None:
        if _is_first_party(binding.module):
            if binding.member is None:
                if attribute is not None:
                    reach(binding.module, attribute)
                else:
                    enter_module(binding.module)
            else:
                reach(binding.module, binding.member)
        elif binding.member is not None:
            result.external_references.add((binding.module, binding.member))
        elif attribute is not None:
            result.external_references.add((binding.module, attribute))

    entry_module = load_module(entry)
    imported_modules.add(entry)
    # The whole handler module is reached; its definitions are not queued again on their own.
    visited.update((entry, name) for name in _top_level_definitions(entry_module))
    queue.append((entry_module, entry_module.tree))
    while queue:
        module, node = queue.pop()
        result.nodes.append((module, node))
        local = _top_level_definitions(module)
        bindings = _bindings(module)
        for inner in _walk_runtime(node):
            if isinstance(inner, ast.Attribute):
                if inner.attr not in used_attributes:
                    used_attributes.add(inner.attr)
                    queue.extend(waiting_methods.pop(inner.attr, []))
                if isinstance(inner.value, ast.Name):
                    binding = bindings.get(inner.value.id)
                    if binding is not None:
                        follow(binding, inner.attr)
            if isinstance(inner, ast.Name):
                if inner.id in local and local[inner.id] is not node:
                    reach(module.name, inner.id)
                elif inner.id in bindings:
                    follow(bindings[inner.id], None)
    return result
