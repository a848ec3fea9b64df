"""Issue 38's two trips, and the package's import graph with its subpackages.

  python results/house/trips.py [CHECKOUT]     # CHECKOUT: the checkout to measure (default: this)

trips_before.json and trips_after.json are its output for `git archive` copies of main before
the redesign and of branch house after it (JAX_PLATFORMS=cpu); trips_base2.json and
trips_after2.json, of main at the redesign's second part's base and of branch house2 after it.

Trip of a run's config: a tiny budget run (`runlocal`, ResNet-8, target_macs=0.5, two epochs)
is trained with `train.train_and_evaluate(config, workdir)` under `sys.setprofile`; every call
of a function in the package whose arguments hold that config object (itself, or as an item of
a tuple such as the Run) is a step. Trip of
`--mode=analyze`'s workdir: `analysis.analyze(workdir)` on that run, every call whose arguments
hold the workdir (as a string or a path); and of its config, the one config that analyze
reads from the workdir, every call whose arguments hold it. For each trip: the steps, the files they enter, how
often each file is entered (a step in another file than the step before it enters one), and
how often a trip comes back to a file it had left. The import graph counts, as imports.py,
an arrow A -> B for each module B that A imports, but with a subpackage's modules as
`data.formats` and its `__init__` as `data`.
"""

import ast
import collections
import contextlib
import importlib
import io
import json
import os
import pathlib
import sys
import tempfile

CHECKOUT = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                        pathlib.Path(__file__).resolve().parents[2]).resolve()
PACKAGE = CHECKOUT / "l0jax"


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(PACKAGE).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts) or "__init__"


def import_graph() -> dict:
  """Files, lines, arrows and circles over every module of the package, subpackages included."""
  files = sorted(PACKAGE.rglob("*.py"))
  modules = {module_name(f): f for f in files}
  graph = {}
  for name, path in modules.items():
    found = set()
    package = name.rsplit(".", 1)[0] if path.name != "__init__.py" else name
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.ImportFrom):
        if node.level:  # relative: from the module's own package
          base = package if package != "__init__" else ""
          target = ".".join(p for p in (base, node.module or "") if p)
        elif node.module and node.module.startswith("l0jax"):
          target = node.module.removeprefix("l0jax").lstrip(".")
        else:
          continue
        # `from X import m`: the module X.m where m is one, else X itself.
        for a in node.names:
          submodule = f"{target}.{a.name}" if target else a.name
          found |= {submodule} if submodule in modules else {target} & set(modules)
      elif isinstance(node, ast.Import):
        found |= {a.name.removeprefix("l0jax.") for a in node.names
                  if a.name.startswith("l0jax.") and a.name.removeprefix("l0jax.") in modules}
    graph[name] = found - {name}
  lines = {m: len(p.read_text().splitlines()) for m, p in modules.items()}
  sys.path.insert(0, str(pathlib.Path(__file__).parent))
  import imports  # pylint: disable=import-outside-toplevel
  return {"files": len(files), "lines": sum(lines.values()),
          "over_400_lines": {m: n for m, n in sorted(lines.items()) if n > 400},
          "largest": dict(sorted(lines.items(), key=lambda kv: -kv[1])[:6]),
          "arrows": sum(map(len, graph.values())), "circles": imports.circles(graph)}


def trip(fn, holds) -> dict:
  """Runs `fn()`, counting the package's calls whose arguments `holds`."""
  steps = []
  root = str(PACKAGE) + os.sep

  def profile(frame, event, arg):  # pylint: disable=unused-argument
    if event != "call" or not frame.f_code.co_filename.startswith(root):
      return
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount + bool(code.co_flags & 4) + bool(
        code.co_flags & 8)
    values = [frame.f_locals.get(n) for n in code.co_varnames[:count]]
    values += [v for v in values if isinstance(v, (tuple, list))]
    values += [x for v in values if isinstance(v, (tuple, list)) for x in v]
    values += [x for v in values if isinstance(v, dict) for x in v.values()]
    if any(holds(v) for v in values):
      steps.append((module_name(pathlib.Path(code.co_filename)), code.co_name))

  sys.setprofile(profile)
  try:
    with contextlib.redirect_stdout(io.StringIO()):  # what the mode prints is not the figures
      fn()
  finally:
    sys.setprofile(None)
  entries = collections.Counter()
  previous = None
  for module, _ in steps:
    if module != previous:
      entries[module] += 1
    previous = module
  return {"steps": len(steps), "files": len(entries),
          "comes_back": sum(entries.values()) - len(entries),
          "entries": dict(entries.most_common()),
          "sequence": [f"{m}.{f}" for m, f in steps]}


def main() -> None:
  sys.path.insert(0, str(CHECKOUT))
  from absl import logging  # pylint: disable=import-outside-toplevel
  from l0jax import analysis, train  # pylint: disable=import-outside-toplevel
  # run_config since house3; config before.
  config_lib = importlib.import_module(
      "l0jax.run_config" if (PACKAGE / "run_config.py").exists() else "l0jax.config")
  assert pathlib.Path(train.__file__).resolve().parent == PACKAGE, train.__file__
  logging.set_verbosity(logging.WARNING)
  config = config_lib.variant(config_lib.base_config(), "runlocal")
  config.update(model="resnet", depth=8, target_macs=0.5, num_epochs=2)
  workdir = tempfile.mkdtemp(prefix="trips_")
  run = trip(lambda: train.train_and_evaluate(config, workdir), lambda v: v is config)
  path_types = (str, os.PathLike)
  analyze = trip(lambda: analysis.analyze(workdir, "last"),
                 lambda v: isinstance(v, path_types) and os.fspath(v) == workdir)
  analyze_config = trip(lambda: analysis.analyze(workdir, "last"),
                        lambda v: isinstance(v, type(config)))
  print(json.dumps({"checkout": str(CHECKOUT), "imports": import_graph(), "config_trip": run,
                    "workdir_trip": analyze, "analyze_config_trip": analyze_config}, indent=1))


if __name__ == "__main__":
  main()
