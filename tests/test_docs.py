"""The documentation's links and commands hold: README.md, docs/*.md and cluster/README.md.

- Links: every relative Markdown link ``[text](path#anchor)`` names a file or folder of the
  repository and, when it points into a Markdown page, a heading of that page (GitHub's
  anchors). Every path of the repository a page shows in inline code (``wsss/...``,
  ``tests/...``, ``docs/...``, ``benchmarks/...``, ``sweeps/...``, ``configs/...``,
  ``cluster/...``, and ``results/...`` for ``benchmarks/results/...``) exists, except the
  results files listed in ``PENDING``; a test it names (``path::test_name``, or ``B::test_name``
  after the page's legend ``path`` (``B::``)) is defined in that file; a dotted name
  ``wsss.module.name`` (``module`` one of the package's; ``wsss.best_checkpoint`` is an MLflow
  tag) is a module of the package or a name defined in one.
- Commands: every ``wsss SUBCOMMAND`` shown in a code block or in inline code (also without
  the ``wsss`` in inline code that starts ``SUBCOMMAND --option``) is a subcommand of the
  CLI's own parser (``wsss.cli.build_parser``), its ``--help`` exits 0, and each ``--option``
  shown with it is one of its options. Every ``python sweeps/NAME.py`` and
  ``python benchmarks/NAME.py`` is a file; a sweep script's ``--help`` exits 0 and each option
  shown with it (after ``python`` or ``ray submit ... --``) is one of its options.
- README.md fits about two screens: at most 150 lines.

Each failure names the page, the line and the bad link, path, name or command. The checks run
on in-memory pages too (``test_each_check_reports_what_it_is_for``), so they are known to fail
where they should.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import functools
import importlib.util
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsss.cli import build_parser, command_paths, subcommands

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted(["README.md", "cluster/README.md",
               *(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))])
README_MAX_LINES = 150
# Files the docs name before they exist, with what writes them. An entry whose file exists is
# stale (test_pending_files_are_still_pending).
PENDING = {"benchmarks/results/gpu.md": "benchmarks/gpu_check.py --write-results on a GPU"}

REPO_DIRS = ("wsss", "tests", "docs", "benchmarks", "sweeps", "configs", "cluster", "results")
REPO_PATH = re.compile(rf"(?P<path>(?:{'|'.join(REPO_DIRS)})/[\w./-]*|README\.md|pyproject\.toml"
                       rf"|Makefile)(?:::(?P<test>\w+)(?:\[.*\])?)?", re.S)
LEGEND = re.compile(r"`(tests/[\w/]+\.py)` \(`([A-Z])::`\)")
SHORT_TEST = re.compile(r"(?P<letter>[A-Z])::(?P<test>\w+)(?:\[.*\])?", re.S)
DOTTED = re.compile(r"wsss(?:\.\w+)+")
LINK = re.compile(r"!?\[[^\]]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(?<!`)(?P<ticks>`+)(?!`)(?P<code>.+?)(?<!`)(?P=ticks)(?!`)", re.S)
WSSS_COMMAND = re.compile(r"(?:^|(?<=[\s'\"(]))wsss\s+(?P<sub>[a-z][\w-]*)(?P<rest>.*)", re.S)
SCRIPT = re.compile(r"(?P<script>(?:sweeps|benchmarks)/\w+\.py)(?P<rest>.*)", re.S)
FENCE = re.compile(r"^\s*(```|~~~)")


@dataclass(frozen=True)
class Chunk:
    """Text of a page: one code line (continuations joined) or one block of prose."""

    text: str
    line: int
    code: bool

    def line_of(self, offset: int) -> int:
        return self.line + self.text.count("\n", 0, offset)


@dataclass(frozen=True)
class Page:
    name: str  # path from the repository root
    text: str

    @functools.cached_property
    def chunks(self) -> list[Chunk]:
        """Fenced and indented code blocks line by line, the rest paragraph by paragraph."""
        chunks, prose, start = [], [], 0
        lines = self.text.splitlines()
        fenced = in_code = False
        pending_code = ""

        def flush() -> None:
            if prose:
                chunks.append(Chunk("\n".join(prose), start, code=False))
                prose.clear()

        for number, line in enumerate(lines, 1):
            if FENCE.match(line):
                flush()
                fenced = not fenced
                continue
            indented = line.startswith(("    ", "\t"))
            previous_blank = number == 1 or not lines[number - 2].strip()
            in_code = fenced or (indented and (in_code or previous_blank) and not prose)
            if in_code:
                flush()
                code = pending_code + line.strip()
                if code.endswith("\\"):
                    pending_code = code[:-1] + " "
                    continue
                pending_code = ""
                chunks.append(Chunk(_without_comment(code), number, code=True))
            elif line.strip():
                if not prose:
                    start = number
                prose.append(line)
            else:
                flush()
        flush()
        return chunks

    @functools.cached_property
    def anchors(self) -> set[str]:
        """GitHub's anchors of the page's headings."""
        anchors, counts = set(), {}
        for chunk in self.chunks:
            for line in chunk.text.splitlines() if not chunk.code else ():
                heading = re.match(r"#{1,6}\s+(.*)", line)
                if heading:
                    slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower())
                    slug = slug.replace(" ", "-")
                    count = counts.get(slug, 0)
                    anchors.add(f"{slug}-{count}" if count else slug)
                    counts[slug] = count + 1
        return anchors

    def inline_code(self) -> list[tuple[str, int]]:
        """Each inline code span of the prose, with its line."""
        return [(m.group("code").strip(), chunk.line_of(m.start()))
                for chunk in self.chunks if not chunk.code
                for m in INLINE_CODE.finditer(chunk.text)]

    def commands(self) -> list[tuple[str, int, bool]]:
        """Text that may show commands, its line and whether it is a code block's: code lines
        and inline code spans."""
        return ([(c.text, c.line, True) for c in self.chunks if c.code]
                + [(code, line, False) for code, line in self.inline_code()])

    def where(self, line: int) -> str:
        return f"{self.name}:{line}"


def _without_comment(code: str) -> str:
    """A shell line without its trailing ``# comment``."""
    return re.split(r"(?:^|\s)#(?:\s|$)", code, maxsplit=1)[0].rstrip()


def _page(name: str, root: Path = ROOT) -> Page:
    return Page(name, (root / name).read_text(encoding="utf-8"))


# -- links and paths --------------------------------------------------------------------------
def link_problems(page: Page, root: Path = ROOT) -> list[str]:
    """Relative Markdown links whose file, folder or heading does not exist."""
    problems = []
    for chunk in page.chunks:
        if chunk.code:
            continue
        prose = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), chunk.text)
        for m in LINK.finditer(prose):
            target = m.group("target")
            if re.match(r"[a-z][\w+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            where = page.where(chunk.line_of(m.start()))
            file = (root / page.name).parent / path if path else root / page.name
            resolved = file.resolve()
            if not resolved.is_relative_to(root.resolve()) or not resolved.exists():
                problems.append(f"{where}: link ({target}): {path} does not exist")
            elif anchor and resolved.suffix == ".md" and (
                    anchor not in _page(resolved.relative_to(root.resolve()).as_posix(),
                                        root).anchors
                    if path else anchor not in page.anchors):
                problems.append(f"{where}: link ({target}): no heading with anchor #{anchor} "
                                f"in {path or page.name}")
    return problems


def path_problems(page: Page, root: Path = ROOT) -> list[str]:
    """Repository paths, tests and ``wsss.*`` names (of this package, whatever ``root``) in
    inline code that do not exist."""
    problems = []
    legend = dict((letter, path) for path, letter in LEGEND.findall(page.text))
    for code, line in page.inline_code():
        where = page.where(line)
        m, short = REPO_PATH.fullmatch(code), SHORT_TEST.fullmatch(code)
        if m and ".." not in m.group("path"):
            path = m.group("path")
            path = f"benchmarks/{path}" if path.startswith("results/") else path
            if path in PENDING:
                continue
            if not (root / path).exists():
                problems.append(f"{where}: `{code}`: {path} does not exist")
            elif m.group("test") and not _defines_test(root / path, m.group("test")):
                problems.append(f"{where}: `{code}`: {path} defines no {m.group('test')}")
        elif short and short.group("letter") in legend:
            path = legend[short.group("letter")]
            if not _defines_test(root / path, short.group("test")):
                problems.append(f"{where}: `{code}`: {path} defines no {short.group('test')}")
        elif DOTTED.fullmatch(code) and _names_a_module(code):
            problem = _dotted_name_problem(code)
            if problem:
                problems.append(f"{where}: `{code}`: {problem}")
    return problems


def _defines_test(path: Path, name: str) -> bool:
    return path.is_file() and re.search(rf"^\s*(?:async\s+)?def {name}\(", path.read_text(),
                                        re.M) is not None


def _names_a_module(dotted: str) -> bool:
    """Whether ``wsss.x...`` starts with a module of the package (``wsss.best_checkpoint``,
    an MLflow tag, does not)."""
    top = ROOT / "wsss" / dotted.split(".")[1]
    return top.with_suffix(".py").is_file() or (top / "__init__.py").is_file()


def _dotted_name_problem(dotted: str, root: Path = ROOT) -> str | None:
    """Why ``wsss.a.b.name`` is not a module of the package or a name defined in one (None:
    it is). Names below a class are looked up in that class's body."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = root.joinpath(*parts[:cut])
        module = next((f for f in (base.with_suffix(".py"), base / "__init__.py")
                       if f.is_file()), None)
        if module:
            break
    else:
        return "no such module"
    rest = parts[cut:]
    if not rest:
        return None
    tree = ast.parse(module.read_text())
    names = _defined_names(tree.body)
    if rest[0] not in names:
        return f"{'.'.join(parts[:cut])} defines no {rest[0]}"
    node = names[rest[0]]
    if len(rest) > 1 and isinstance(node, ast.ClassDef) and rest[1] not in _defined_names(
            node.body):
        return f"class {rest[0]} of {'.'.join(parts[:cut])} defines no {rest[1]}"
    return None


def _defined_names(body: list[ast.stmt]) -> dict[str, ast.AST]:
    names: dict[str, ast.AST] = {}
    for node in body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names[node.name] = node
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update({(a.asname or a.name).split(".")[0]: node for a in node.names})
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update({t.id: node for target in targets for t in ast.walk(target)
                          if isinstance(t, ast.Name)})
    return names


# -- commands ---------------------------------------------------------------------------------
@functools.cache
def cli_parser() -> argparse.ArgumentParser:
    return build_parser()


@functools.cache
def sweep_parser(script: str) -> argparse.ArgumentParser:
    """The parser of ``sweeps/NAME.py``: its ``SWEEP`` given to the runner's parser."""
    from wsss.tune.runner import build_parser as build_sweep_parser

    spec = importlib.util.spec_from_file_location(f"docs_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return build_sweep_parser(module.SWEEP, module.__doc__)


@functools.cache
def _cli_help_exits_0(argv: tuple[str, ...]) -> bool:
    return _help_exits_0(cli_parser(), list(argv))


def _help_exits_0(parser: argparse.ArgumentParser, argv: list[str]) -> bool:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            parser.parse_args([*argv, "--help"])
        except SystemExit as stop:
            return stop.code == 0
    return False


def _options(rest: str) -> list[str]:
    """The ``--options`` of a command line's arguments (``[--eval]``, ``--set=x``, not
    ``--``), up to the end of a quoted command or of the shell command."""
    rest = re.split(r"['\";`]|&&", rest, maxsplit=1)[0]
    return [token.strip("[]").split("=")[0] for token in rest.split()
            if token.strip("[]").startswith("--") and token.strip("[]") != "--"]


def shown_commands(page: Page) -> list[tuple[list[str], list[str], int]]:
    """(subcommand path, options, line) of each ``wsss`` command the page shows."""
    found = []
    cli_commands = subcommands(cli_parser())
    for text, line, block in page.commands():
        for m in WSSS_COMMAND.finditer(text):
            # in inline code a command starts the span, a quote or a message's "...: "
            # (`is not a wsss classifier checkpoint` is prose)
            if block or re.search(r"(?:^|:\s+|['\"(])$", text[:m.start()]):
                found.append((m.group("sub"), m.group("rest"), line))
        bare = re.match(r"(?P<sub>[a-z][\w-]*)(?P<rest>\s+--.*)", text, re.S)
        if bare and bare.group("sub") in cli_commands and not text.startswith("wsss"):
            found.append((bare.group("sub"), bare.group("rest"), line))
    commands = []
    for sub, rest, line in found:
        path = [sub]
        if rest.startswith(":"):  # an error message (`wsss data: error: ...`): the name only
            commands.append((path, [], line))
            continue
        nested = subcommands(cli_commands[sub]) if sub in cli_commands else {}
        word = re.match(r"\s+([a-z][\w-]*)", rest)
        if nested and word:
            path.append(word.group(1))
            rest = rest[word.end():]
        commands.append((path, _options(rest), line))
    return commands


def command_problems(page: Page) -> list[str]:
    """``wsss`` commands whose subcommand, ``--help`` or options do not exist."""
    problems = []
    for path, options, line in shown_commands(page):
        where, shown = page.where(line), " ".join(["wsss", *path])
        parser, known = cli_parser(), []
        for name in path:
            choices = subcommands(parser)
            if name not in choices:
                problems.append(f"{where}: `{shown}`: no subcommand {name!r}; choose one of: "
                                f"{', '.join(choices)}")
                break
            parser = choices[name]
            known.append(name)
        else:
            if not _cli_help_exits_0(tuple(known)):
                problems.append(f"{where}: `{shown} --help` does not exit 0")
            problems += [f"{where}: `{shown}` has no option {option}" for option in options
                         if option not in parser._option_string_actions]
    return problems


def script_problems(page: Page, root: Path = ROOT) -> list[str]:
    """``sweeps/`` and ``benchmarks/`` scripts the page runs that do not exist, and sweep
    options they do not take."""
    problems = []
    for text, line, _ in page.commands():
        for m in SCRIPT.finditer(text):
            script, rest = m.group("script"), m.group("rest")
            runs = text[:m.start()].rstrip().endswith("python") or rest.startswith(" -- ")
            if not runs:
                continue
            where = page.where(line)
            if not (root / script).is_file():
                problems.append(f"{where}: `{script}` does not exist")
            elif script.startswith("sweeps/"):
                parser = sweep_parser(script)
                if not _help_exits_0(parser, []):
                    problems.append(f"{where}: `python {script} --help` does not exit 0")
                problems += [f"{where}: `{script}` has no option {option}"
                             for option in _options(rest)
                             if option not in parser._option_string_actions]
    return problems


# -- the tests --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", DOCS)
def test_links_resolve(name):
    problems = link_problems(_page(name))
    assert not problems, "broken links:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", DOCS)
def test_paths_tests_and_names_exist(name):
    problems = path_problems(_page(name))
    assert not problems, "missing paths, tests or names:\n" + "\n".join(problems)


@pytest.mark.parametrize("name", DOCS)
def test_commands_have_their_help_and_options(name):
    page = _page(name)
    problems = command_problems(page) + script_problems(page)
    assert not problems, "commands that do not exist:\n" + "\n".join(problems)


def test_the_docs_show_every_subcommand():
    """Not vacuous: the command check sees at least one command of each subcommand."""
    shown = {tuple(path) for name in DOCS for path, _, _ in shown_commands(_page(name))}
    paths = command_paths(cli_parser())
    leaves = [path for path in paths if not any(other[:len(path)] == path and other != path
                                                for other in paths)]
    missing = [" ".join(leaf) for leaf in leaves if leaf not in shown]
    assert not missing, f"no page shows these commands: wsss {', wsss '.join(missing)}"


def test_pending_files_are_still_pending():
    written = [path for path in PENDING if (ROOT / path).exists()]
    assert not written, f"{written} exist now: remove them from PENDING in {__file__}"


def test_readme_fits_two_screens():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, (f"README.md has {lines} lines (at most "
                                       f"{README_MAX_LINES}): move the rest to docs/")


def test_each_check_reports_what_it_is_for(tmp_path):
    """Negative controls: a page with one fault of each kind is reported, with its line."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "other.md").write_text("# Other page\n\n## A section\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_real():\n    pass\n")
    text = "\n".join([
        "# Page",                                              # 1
        "",
        "[ok](other.md#a-section) [ok](#page) [web](https://example.org/x)",
        "[gone](missing.md) [no anchor](other.md#nowhere)",    # 4
        "[self](#no-such-heading)",                            # 5
        "",
        "Tests in `tests/test_x.py` (`X::`): `tests/test_x.py::test_real`, `X::test_real`",
        "`tests/test_x.py::test_gone` `X::test_gone` `sweeps/nothing.py`",   # 8
        "`wsss.core.nothing` `wsss.config.no_such_name` `wsss.registry.Registry.nope`",  # 9
        "",
        "    wsss train-cls --data DIR --no-such-option 1     # a comment --not-an-option",
        "    wsss trian-cls --data DIR",                       # 12
        "    wsss data synth --out d --bogus",                 # 13
        "    python sweeps/no_such_sweep.py --smoke-test",     # 14
        "    python sweeps/erasing.py --smoke-test --no-such-flag",  # 15
        "",
        "Inline: `cam --kind cam --nope`, `wsss data: error: x`, `not a wsss classifier`.",
    ])
    page = Page("docs/page.md", text)
    (tmp_path / "docs" / "page.md").write_text(text)
    links = link_problems(page, tmp_path)
    assert [p.split(":")[1] for p in links] == ["4", "4", "5"], links
    assert "missing.md does not exist" in links[0] and "#nowhere" in links[1]
    paths = path_problems(page, tmp_path)
    assert [p.split(":")[1] for p in paths] == ["8", "8", "8", "9", "9", "9"], paths
    commands = command_problems(page)
    assert any("docs/page.md:11" in p and "--no-such-option" in p for p in commands), commands
    assert any("docs/page.md:12" in p and "no subcommand 'trian-cls'" in p for p in commands)
    assert any("docs/page.md:13" in p and "wsss data synth` has no option --bogus" in p
               for p in commands), commands
    assert any("docs/page.md:17" in p and "--nope" in p for p in commands), commands
    assert not any("--not-an-option" in p or "--data" in p for p in commands), commands
    assert len(commands) == 4, commands
    scripts = script_problems(page, ROOT)
    assert [p.split(":")[1] for p in scripts] == ["14", "15"], scripts
    assert "--no-such-flag" in scripts[1]
