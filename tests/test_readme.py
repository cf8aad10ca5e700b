"""README.md stays true: every ``vitlab`` command in its code blocks parses, every repository path it names exists,
every config it names is in configs/, its Python blocks compile, the docs' links resolve, and its results table is
what ``docs/results/*.json`` render (``python benchmarks/report.py --check``).

Nothing trains or loads a model: Lightning's verbs are parsed with ``--print_config`` (the config, its classes and
every flag are checked; nothing is instantiated), vitlab's own verbs by their argparse parsers, stopped right after
parsing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
TEXT = README.read_text()
LIGHTNING_VERBS = ("fit", "validate", "test", "predict")
REPO_DIRS = ("configs", "docs", "benchmarks", "export", "vitlab", "tests", ".ci")


def code_blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


def vitlab_commands(text: str = TEXT) -> list[list[str]]:
    """The argument lists of every ``vitlab ...`` in the bash blocks (``srun vitlab``, ``-m vitlab`` too)."""
    found = []
    for block in code_blocks(text, "bash"):
        for line in block.replace("\\\n", " ").splitlines():
            tokens = shlex.split(line, comments=True)
            for i, tok in enumerate(tokens):
                if tok == "vitlab" and (i == 0 or tokens[i - 1] in ("srun", "-m")):
                    if tokens[i + 1:] not in found:
                        found.append(tokens[i + 1:])
                    break
    return found


COMMANDS = vitlab_commands()


def test_readme_has_commands_and_is_short():
    assert len(COMMANDS) >= 15, COMMANDS
    assert TEXT.index("make demo") < TEXT.index("## "), "`make demo` / `make test` come first"
    assert len(TEXT.splitlines()) <= 300


class _Parsed(BaseException):
    """Raised right after a vitlab verb's argparse parser accepted its arguments (nothing else runs)."""


def _parse_only(self, args=None, namespace=None):
    raise _Parsed(_REAL_PARSE_ARGS(self, args, namespace))


_REAL_PARSE_ARGS = argparse.ArgumentParser.parse_args


def _is_lightning(args: list[str]) -> bool:
    return args[0] in LIGHTNING_VERBS and (args[0] != "predict" or len(args) < 2 or args[1].startswith("-"))


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(a)[:80] for a in COMMANDS])
def test_command_parses(args):
    out, err = io.StringIO(), io.StringIO()
    if _is_lightning(args):
        from vitlab.cli import run_cli

        extra = [] if any(a == "--print_config" or a.endswith(".help") or a in ("-h", "--help") for a in args) \
            else ["--print_config"]
        with pytest.raises(SystemExit) as e, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch.object(sys, "argv", ["vitlab"]):  # args only (Lightning warns when sys.argv has more)
            run_cli([*args, *extra])
        assert e.value.code in (0, None), f"vitlab {shlex.join(args)}: {err.getvalue()[-1500:]}"
        return
    from vitlab import cli

    known = {*cli.COMMANDS, "predict"}
    assert args[0] in known, f"`vitlab {args[0]}` is not a vitlab command ({', '.join(sorted(known))})"
    with mock.patch.object(argparse.ArgumentParser, "parse_args", _parse_only), contextlib.redirect_stderr(err), \
            pytest.raises((_Parsed, SystemExit)) as e:
        cli.main(args)
    assert e.type is _Parsed, f"vitlab {shlex.join(args)}: {err.getvalue()[-1500:]}"


def _expand_braces(path: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", path)
    if not m:
        return [path]
    return [p for alt in m[1].split(",") for p in _expand_braces(path[:m.start()] + alt + path[m.end():])]


def test_paths_exist():
    """Repository paths in the text (configs/..., docs/..., benchmarks/..., ...) and relative link targets; runs/
    and data/ are outputs and the user's own data, not checked."""
    pattern = rf"(?<![\w/.-])((?:{'|'.join(re.escape(d) for d in REPO_DIRS)})/[\w./{{}},-]*)"
    paths = {p.rstrip(".,") for p in re.findall(pattern, TEXT)}
    paths |= {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", TEXT) if not re.match(r"[a-z]+:|#", t)}
    missing = [p for p in sorted(paths) for q in _expand_braces(p) if q and not (REPO / q).exists()]
    assert not missing, f"README.md names paths that do not exist: {missing}"
    assert len(paths) > 20


def test_configs_named_exist():
    names = set(re.findall(r"([\w-]+\.yaml)\b", TEXT))
    have = {p.name for p in (REPO / "configs").rglob("*.yaml")}
    assert names and not names - have, f"configs named in README.md but not in configs/: {sorted(names - have)}"


def test_python_blocks_compile():
    for i, block in enumerate(code_blocks(TEXT, "python")):
        compile(block, f"README.md python block {i}", "exec")


def test_docs_links_resolve():
    broken = []
    for page in [*(REPO / "docs").glob("*.md"), *(REPO / "docs").glob("*/*.md")]:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:|#", target):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert not broken, broken


def test_results_table_matches_result_files():
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "report.py"), "--check"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
