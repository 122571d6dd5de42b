"""The package's import graph, read from the source with ``ast`` (nothing imported)."""
import ast
import os

PACKAGE = "attn_contrastive"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules() -> dict[str, str]:
  """``{dotted module name: file}`` of every module of the package."""
  found = {}
  for folder, _, files in os.walk(os.path.join(ROOT, PACKAGE)):
    for name in files:
      if name.endswith(".py"):
        path = os.path.join(folder, name)
        dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        found[dotted.removesuffix(".__init__")] = path
  return found


def import_graph() -> dict[str, set[str]]:
  """``{module: the package's modules it imports}``, imports inside functions included
  (a late import hides a cycle from Python, not from this graph)."""
  modules = _modules()
  graph = {}
  for module, path in modules.items():
    with open(path) as f:
      tree = ast.parse(f.read(), path)
    imported = set()
    for node in ast.walk(tree):
      if isinstance(node, ast.Import):
        imported.update(a.name for a in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        # ``from package import module`` names a module; ``from module import name`` not.
        imported.update(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules
                        else node.module for a in node.names)
    graph[module] = {m for m in imported if m in modules and m != module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One cycle of ``graph`` as ``[a, b, …, a]``, or None."""
  state, stack = {}, []

  def visit(node):
    state[node] = "open"
    stack.append(node)
    for nxt in sorted(graph.get(node, ())):
      if state.get(nxt) == "open":
        return stack[stack.index(nxt):] + [nxt]
      if nxt not in state and (cycle := visit(nxt)):
        return cycle
    stack.pop()
    state[node] = "done"
    return None

  for node in sorted(graph):
    if node not in state and (cycle := visit(node)):
      return cycle
  return None


def test_find_cycle_finds_a_planted_cycle():
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
  assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_the_package_has_no_import_cycle():
  graph = import_graph()
  assert "attn_contrastive.runs" in graph["attn_contrastive.tasks.evaluation"]  # the reader works
  cycle = find_cycle(graph)
  assert cycle is None, " -> ".join(cycle)


def test_only_main_and_tasks_import_tasks():
  """Tasks are the top of the graph: what several of them use lives below them."""
  tasks = f"{PACKAGE}.tasks"
  importers = {m for m, imported in import_graph().items()
               if any(i == tasks or i.startswith(tasks + ".") for i in imported)}
  assert {m for m in importers if not m.startswith(tasks)} == {f"{PACKAGE}.main"}


def test_a_task_uses_no_other_task():
  """A task imports from ``tasks/`` only the evaluation skeleton and the task table:
  what two tasks share lives below them, not in one of them."""
  tasks = f"{PACKAGE}.tasks"
  shared = {tasks, f"{tasks}.evaluation"}
  for module, imported in import_graph().items():
    if module.startswith(tasks + ".") and module not in shared:
      others = {i for i in imported if i.startswith(tasks + ".")} - shared
      assert not others, f"{module} imports {sorted(others)}"
