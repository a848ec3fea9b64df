"""The package's import graph, for issue 38's before/after: files, lines, arrows, circles.

  python results/house/imports.py            # from the checkout's root

Reads every module of l0jax/ with `ast` (nothing is imported or run) and
counts an arrow A -> B for each l0jax module B that A imports, at the top or
inside a function. Prints one JSON object, then the modules by size and the
import circles (strongly connected components of more than one module).
"""

import ast
import json
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "l0jax"


def imported(tree: ast.AST, modules: set[str]) -> set[str]:
  """The l0jax modules a module's code imports."""
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("l0jax"):
      rest = node.module.removeprefix("l0jax").lstrip(".")
      found |= {rest} if rest else {a.name for a in node.names}
    elif isinstance(node, ast.Import):
      found |= {a.name.removeprefix("l0jax.") for a in node.names if a.name.startswith("l0jax.")}
  return found & modules


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
  """Strongly connected components of more than one module (Tarjan)."""
  index, low, stack, on_stack, found = {}, {}, [], set(), []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def main() -> None:
  files = sorted(PACKAGE.glob("*.py"))
  modules = {f.stem for f in files}
  lines = {f.stem: len(f.read_text().splitlines()) for f in files}
  graph = {f.stem: imported(ast.parse(f.read_text()), modules) - {f.stem} for f in files}
  result = {"files": len(files), "lines": sum(lines.values()),
            "over_400_lines": {m: n for m, n in sorted(lines.items()) if n > 400},
            "arrows": sum(map(len, graph.values())), "circles": circles(graph),
            "imports": {m: sorted(graph[m]) for m in sorted(graph)}}
  print(json.dumps(result))
  for module, n in sorted(lines.items(), key=lambda kv: -kv[1]):
    print(f"{module:<20} {n:>5} lines, imports {len(graph[module]):>2}, imported by "
          f"{sum(module in targets for targets in graph.values()):>2}")
  print("circles:", result["circles"] or "none")


if __name__ == "__main__":
  main()
