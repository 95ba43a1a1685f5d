"""The layering rules of the package, read from the source (no imports run): library code never
imports `cai_jax.jobs` (the jobs are thin recipes over the library, never the other way), and
no two modules import each other, directly or around a circle. Imports inside functions count
(they still tie the modules together); imports under `if TYPE_CHECKING:` do not (they never
run: a type-only reference is not an import circle)."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "cai_jax")


def _modules() -> dict[str, str]:
  out = {}
  for folder, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(folder, f)
        name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
  return out


def _type_checking_block(node) -> bool:
  test = getattr(node, "test", None)
  return isinstance(node, ast.If) and (
      (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
      or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"))


def _imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
  """The cai_jax modules `name` imports (a `from package import submodule` counts as the
  submodule)."""
  is_package = path.endswith("__init__.py")
  found: set[str] = set()

  def visit(node):
    for child in ast.iter_child_nodes(node):
      if _type_checking_block(child):
        continue
      if isinstance(child, ast.Import):
        found.update(a.name for a in child.names)
      elif isinstance(child, ast.ImportFrom):
        base = child.module or ""
        if child.level:
          parts = name.split(".") if is_package else name.split(".")[:-1]
          parts = parts[:len(parts) - child.level + 1]
          base = ".".join(parts + ([child.module] if child.module else []))
        for a in child.names:
          full = f"{base}.{a.name}"
          found.add(full if full in modules else base)
      visit(child)

  visit(ast.parse(open(path, encoding="utf-8").read(), path))
  return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
  modules = _modules()
  return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components with more than one module (Tarjan, iterative)."""
  index, low, on_stack, stack, out = {}, {}, set(), [], []
  counter = 0
  for root in sorted(graph):
    if root in index:
      continue
    work = [(root, iter(sorted(graph[root])))]
    index[root] = low[root] = counter
    counter += 1
    stack.append(root)
    on_stack.add(root)
    while work:
      v, children = work[-1]
      for w in children:
        if w not in index:
          index[w] = low[w] = counter
          counter += 1
          stack.append(w)
          on_stack.add(w)
          work.append((w, iter(sorted(graph[w]))))
          break
        if w in on_stack:
          low[v] = min(low[v], index[w])
      else:
        work.pop()
        if work:
          low[work[-1][0]] = min(low[work[-1][0]], low[v])
        if low[v] == index[v]:
          component = []
          while True:
            w = stack.pop()
            on_stack.discard(w)
            component.append(w)
            if w == v:
              break
          if len(component) > 1:
            out.append(sorted(component))
  return out


def test_cycle_finder_finds_a_circle_and_only_circles():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
  assert _cycles(graph) == [["a", "b", "c"]]
  assert _cycles({"a": {"b"}, "b": set()}) == []


def test_library_code_never_imports_jobs():
  graph = _graph()
  assert "cai_jax.jobs.pipeline" in graph and graph["cai_jax.jobs.pipeline"]  # the reader works
  bad = sorted((m, t) for m, targets in graph.items() for t in targets
               if t.split(".")[:2] == ["cai_jax", "jobs"]
               and m.split(".")[:2] != ["cai_jax", "jobs"] and m != "cai_jax.main")
  assert bad == [], bad


def test_no_import_circles():
  assert _cycles(_graph()) == []


# The model families' own files; every other module talks to a model through the decoder API.
FAMILY_FILES = {"cai_jax.model.families.gemma2", "cai_jax.model.families.gemma3"}


def test_generic_modules_do_not_name_a_family():
  """The word "Gemma" appears only in the Gemma families' own files (configs that choose a
  Gemma checkpoint live outside the package): generic code is family-neutral."""
  named = []
  for name, path in sorted(_modules().items()):
    if name in FAMILY_FILES:
      continue
    with open(path, encoding="utf-8") as f:
      named += [f"{path}:{i}" for i, line in enumerate(f, 1) if "Gemma" in line]
  assert not named, named
