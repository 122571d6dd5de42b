"""The documents: a README a newcomer reads in minutes, links that resolve, configs whose
docstrings stay short, and every command of README.md, docs/, benchmarks/README.md and the
configs' docstrings as it is written: configs load, overrides name existing keys and parse,
the entry point's checks pass, modules, scripts and flags exist, launchers dry-run. No JAX
program is compiled: a command is checked up to where it would start JAX."""
from __future__ import annotations

import ast
import importlib.util
import itertools
import pathlib
import re
import shlex
import subprocess

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from attn_contrastive import config_checks

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCUMENTS = [README, *sorted((ROOT / "docs").rglob("*.md")), ROOT / "benchmarks" / "README.md"]
CONFIGS = sorted((ROOT / "configs").glob("*.py"))

#: The README's two opening commands, byte for byte: the demo study, and the tests as CI
#: runs them.
DEMO_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && "
                "python -m attn_contrastive.main --config=configs/study.py --workdir=workdir/study")
TEST_COMMAND = ("python3 -m venv .venv && . .venv/bin/activate && pip install -e '.[test]' && "
                "python -m pytest -n 2 tests")
MAX_README_LINES = 250
MAX_DOCSTRING_FRACTION = 0.4

#: Fenced blocks whose commands are not run as written (transcripts, layouts).
UNCHECKED_BLOCKS = ("text", "console")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
_VARIABLE = re.compile(r"\$\{?(\w+)\}?")
_SEPARATORS = (";", "&&", "||", "|", "&")
# ml_collections loads config files with a deprecated importlib call.
pytestmark = pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")


# ---------------------------------------------------------------------------- commands


def _statements(text: str) -> list[list[str]]:
  """The shell statements of ``text``: continuations joined, comments dropped, split
  at ``;``, ``&&``, ``|``; ``do``/``then`` prefixes and ``done``/``fi`` removed."""
  out = []
  for line in text.replace("\\\n", " ").splitlines():
    lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lex.whitespace_split, lex.commenters = True, ""
    tokens = list(lex)
    tokens = tokens[:next((i for i, t in enumerate(tokens) if t.startswith("#")), len(tokens))]
    for sep, group in itertools.groupby(tokens, lambda t: t in _SEPARATORS):
      words = list(group)
      while words and words[0] in ("do", "then"):
        words = words[1:]
      if not sep and words and words != ["done"] and words != ["fi"]:
        out.append(words)
  return out


def _expand(word: str, env: dict[str, str]) -> str:
  def value(match):
    assert match.group(1) in env, f"${match.group(1)} is not set in the block: {word}"
    return env[match.group(1)]
  return _VARIABLE.sub(value, word)


def _is_assignment(word: str) -> bool:
  return re.fullmatch(r"[A-Za-z_]\w*=.*", word) is not None


def _commands(text: str) -> list[tuple[str, ...]]:
  """Each command of a block, with its variables expanded: ``NAME=value`` statements
  set them, and ``for NAME in a b c`` loops give one command per value (every loop of
  the block, in every combination)."""
  statements = _statements(text)
  loops = {s[1]: s[3:] for s in statements if s[0] == "for" and s[2:3] == ["in"]}
  found = []
  for values in itertools.product(*loops.values()):
    env = dict(zip(loops, values))
    for words in statements:
      if words[0] == "for":
        continue
      if all(_is_assignment(w) for w in words):
        for w in words:
          name, _, value = w.partition("=")
          env[name] = _expand(value, env)
        continue
      while _is_assignment(words[0]):  # an environment variable for this command only
        words = words[1:]
      command = tuple(_expand(w, env) for w in words)
      if command not in found:
        found.append(command)
  return found


def _markdown_commands(path: pathlib.Path) -> list[tuple[str, ...]]:
  text = path.read_text()
  commands = []
  for lang, body in _FENCE.findall(text):
    if lang not in UNCHECKED_BLOCKS:
      commands += _commands(body)
  prose = _FENCE.sub("", text)
  for span in re.findall(r"`([^`\n]+)`", prose):
    if span.startswith("python ") and not re.search(r"[<\[]", span):  # not a template
      commands += _commands(span)
  return commands


def _docstrings(path: pathlib.Path) -> list[ast.Expr]:
  """The module's docstring and those of its functions and classes, as AST nodes."""
  tree = ast.parse(path.read_text())
  nodes = [tree] + [n for n in ast.walk(tree)
                    if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
  return [n.body[0] for n in nodes
          if n.body and isinstance(n.body[0], ast.Expr)
          and isinstance(n.body[0].value, ast.Constant) and isinstance(n.body[0].value.value, str)]


def _docstring_commands(path: pathlib.Path) -> list[tuple[str, ...]]:
  """The ``python ...`` commands of a config's docstring (with their continuation lines)."""
  commands = []
  for node in _docstrings(path):
    lines = node.value.value.splitlines()
    for i, line in enumerate(lines):
      if line.strip().startswith("python "):
        j = i
        while lines[j].rstrip().endswith("\\"):
          j += 1
        commands += _commands("\n".join(lines[i:j + 1]))
  return commands


def _all_commands() -> list[tuple[str, str]]:
  """(where, command) for every command of the documents and config docstrings."""
  found = []
  for path in [*DOCUMENTS, *CONFIGS]:
    where = str(path.relative_to(ROOT))
    commands = _docstring_commands(path) if path.suffix == ".py" else _markdown_commands(path)
    found += [(where, shlex.join(c)) for c in commands]
  return found


COMMANDS = _all_commands()


# ---------------------------------------------------------------------------- checks


def _defined_flags(source: pathlib.Path, siblings: bool = True) -> set[str]:
  """Flag names a script or module defines (absl ``DEFINE_*`` and argparse), with those
  of the sibling scripts it imports (a benchmark sharing another's flags)."""
  text = source.read_text()
  names = (set(re.findall(r"DEFINE_\w+\(\s*[\"'](\w+)[\"']", text))
           | {f.replace("-", "_") for f in re.findall(r"add_argument\(\s*[\"']--([\w-]+)", text)})
  for module in re.findall(r"^import (\w+)", text, re.M) if siblings else ():
    if source.with_name(f"{module}.py").is_file():
      names |= _defined_flags(source.with_name(f"{module}.py"), siblings=False)
  return names


def _flat_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> set[str]:
  keys = set()
  for k, v in cfg.items():
    keys.add(prefix + k)
    if isinstance(v, ml_collections.ConfigDict):
      keys |= _flat_keys(v, f"{prefix}{k}.")
  return keys


def _parse_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
  """The config ``--config=spec`` and ``overrides`` give, parsed as the entry point does."""
  argv = ["main", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file("config", None, "", flag_values=values,
                                           lock_config=True, sys_argv=argv)
  values(argv)
  return holder.value


def _check_config(spec: str, overrides: list[str], where: str) -> ml_collections.ConfigDict:
  """Loads ``spec``, checks that every overridden key exists, applies the overrides."""
  path = ROOT / spec.partition(":")[0]
  assert path.is_file(), f"{where}: no config file {spec}"
  keys = _flat_keys(_parse_config(spec, []))
  for arg in overrides:
    key = arg[len("--config."):].partition("=")[0]
    assert key in keys, f"{where}: {spec} has no key {key!r}"
  return _parse_config(spec, overrides)


def _split_config_args(args: list[str]) -> tuple[str | None, list[str], list[str]]:
  """(``--config`` spec, ``--config.*`` overrides, the other arguments)."""
  spec = next((a.split("=", 1)[1] for a in args if a.startswith("--config=")), None)
  overrides = [a for a in args if a.startswith("--config.")]
  rest = [a for a in args if not a.startswith("--config")]
  return spec, overrides, rest


def _check_flags(args: list[str], source: pathlib.Path, where: str) -> None:
  defined = _defined_flags(source)
  for arg in args:
    if arg.startswith("--"):
      name = arg[2:].split("=", 1)[0]
      assert name in defined or (name.startswith("no") and name[2:] in defined), (
          f"{where}: {source.relative_to(ROOT)} defines no flag --{name}")


def _check_main(args: list[str], where: str) -> None:
  spec, overrides, rest = _split_config_args(args)
  assert spec and any(a.startswith("--workdir=") for a in rest), (
      f"{where}: the entry point needs --config and --workdir")
  config = _check_config(spec, overrides, where)
  assert not config_checks.problems(config), (where, config_checks.problems(config))
  _check_flags(rest, ROOT / "attn_contrastive" / "main.py", where)


def _check_module(module: str, args: list[str], where: str) -> None:
  if module == "attn_contrastive.main":
    return _check_main(args, where)
  if module == "pytest":
    for arg in args:
      if arg.startswith("tests"):
        assert (ROOT / arg).exists(), f"{where}: no {arg}"
    return None
  spec = importlib.util.find_spec(module)
  assert spec is not None and spec.origin, f"{where}: no module {module}"
  source = pathlib.Path(spec.origin)
  if source.name == "__init__.py":  # a package run with -m: its __main__
    source = source.with_name("__main__.py")
  assert source.is_file(), f"{where}: {module} cannot be run with -m"
  _check_flags(args, source, where)
  return None


def _check_script(script: str, args: list[str], where: str) -> None:
  source = ROOT / script
  assert source.is_file(), f"{where}: no script {script}"
  spec, overrides, rest = _split_config_args(args)
  if spec:
    _check_config(spec, overrides, where)
  _check_flags(rest, source, where)


def _check_launcher(words: list[str], where: str) -> None:
  """A launcher's command: its config and overrides, then the launcher itself with
  ``--dry-run`` (prints the commands it would run; nothing is started)."""
  if words[0] == "sbatch":  # sbatch's own options, then the batch script and its arguments
    words = words[next(i for i, w in enumerate(words) if w.startswith("launch/")):]
  script, args = words[0], words[1:]
  assert (ROOT / script).is_file(), f"{where}: no launcher {script}"
  spec = next(a for a in args if a.startswith("configs/"))
  _check_config(spec, [a for a in args if a.startswith("--config.")], where)
  args = [a for a in args if a != "--dry-run"]
  run = subprocess.run(["bash", script, "--dry-run", *args], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=False)
  assert run.returncode == 0, f"{where}: {script} --dry-run failed:\n{run.stderr}"


def check_command(where: str, command: str) -> None:
  """Checks one command as far as it can be run without starting JAX or a cluster."""
  words = shlex.split(command)
  if words[0] in ("python", "python3") and words[1:2] == ["-m"]:
    _check_module(words[2], words[3:], where)
  elif words[0] in ("python", "python3") and words[1].endswith(".py"):
    _check_script(words[1], words[2:], where)
  elif words[0] == "sbatch" or words[0].startswith("launch/"):
    _check_launcher(words, where)


# ---------------------------------------------------------------------------- tests


def test_readme_is_short():
  lines = README.read_text().splitlines()
  assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_readme_opens_with_the_two_commands():
  blocks = _FENCE.findall(README.read_text())
  assert [body for _, body in blocks[:2]] == [DEMO_COMMAND + "\n", TEST_COMMAND + "\n"]


def _slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
  text = _FENCE.sub("", path.read_text())
  return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("path", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
  text = _FENCE.sub("", path.read_text())
  links = re.findall(r"\]\(([^)\s]+)\)", text)
  assert links or path.name != "README.md"
  for link in links:
    if re.match(r"[a-z]+:", link):
      continue  # a web address
    target, _, anchor = link.partition("#")
    resolved = (path.parent / target).resolve() if target else path
    assert resolved.exists(), f"{path.relative_to(ROOT)}: {link} does not exist"
    if anchor:
      assert anchor in _anchors(resolved), f"{path.relative_to(ROOT)}: no heading #{anchor}"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_docstrings_are_short(path):
  total = len(path.read_text().splitlines())
  docstring = sum(n.end_lineno - n.lineno + 1 for n in _docstrings(path))
  assert docstring <= MAX_DOCSTRING_FRACTION * total, (
      f"{path.name}: {docstring} of {total} lines are docstring; move the rest to docs/")


def test_every_config_has_a_documented_command():
  documented = {m for _, c in COMMANDS for m in re.findall(r"configs/(\w+\.py)", c)}
  assert {p.name for p in CONFIGS} <= documented


@pytest.mark.parametrize("where,command", COMMANDS)
def test_command_works_as_written(where, command):
  check_command(where, command)


def test_the_checks_catch_mistakes():
  """A mistyped key, a bad value type, a missing file, an undefined flag: each refused."""
  good = "python -m attn_contrastive.main --config=configs/contrastive.py --workdir=/tmp/x"
  check_command("here", good)
  check_command("here", "python -m attn_contrastive.main --config=configs/linear_eval.py "
                "--workdir=/tmp/x --config.run_dir=/tmp/simclr")
  for bad in (good + " --config.optim.base_lrr=1", good + " --config.seed=abc",
              good.replace("contrastive.py", "contrastiv.py"), good + " --wokdir=/tmp/y",
              "python -m attn_contrastive.main --config=configs/linear_eval.py --workdir=/tmp/x",
              "python -m attn_contrastive.report --runs=a --outt=b",
              "python benchmarks/train_step.py --config=configs/contrastive.py --stepps=1"):
    with pytest.raises((AssertionError, flags.Error)):
      check_command("here", bad)


def test_commands_are_found():
  """Blocks are read as a shell would: continuations, chains, variables and loops."""
  block = ("B=gs://b\nfor ROW in r1 r2; do\n  python -m m --w=$B/$ROW \\\n"
           "      --x=1   # a comment\n  echo ${ROW}; done\nA=1 python -m n && python -m o")
  assert _commands(block) == [("python", "-m", "m", "--w=gs://b/r1", "--x=1"),
                              ("echo", "r1"), ("python", "-m", "n"), ("python", "-m", "o"),
                              ("python", "-m", "m", "--w=gs://b/r2", "--x=1"), ("echo", "r2")]
  assert any(where == "README.md" and "configs/study.py" in c for where, c in COMMANDS)
