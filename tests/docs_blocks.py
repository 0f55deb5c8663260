"""The fenced code blocks of README.md and docs/*.md, and what the docs-examples test does with
each command in them (run it, check its flags, or leave it out for a stated reason)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_COMMANDS = {"text", "json", "yaml", "yml", "toml", "ini"}  # replies, configs, file trees
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}

# Whole files whose commands cannot run here, and why.
FILE_SKIPS = {
    "docs/DOCKER.md": "every command drives a Docker engine or builds its images "
    "(tests/test_docker.py checks the compose file and the Dockerfiles)",
}
# (pattern on the command without its leading VAR=value words, reason): first match wins.
SKIPS = [
    (r"^make run\b", "starts the stack until Ctrl-C (tests/test_app_dev_server.py runs it)"),
    (r"^make test\b", "is the whole test suite, this test among it"),
    (r"^docker\b", "needs a Docker engine (docs/DOCKER.md)"),
    (
        r"^(uvicorn backend\.main:app|(\.venv/bin/)?python -m (backend|app)(\s|$))",
        "a server that runs until stopped; this test starts the same service and app",
    ),
]
# Training, evaluations and benchmarks take minutes to days on real data: their entry point
# runs until argparse has accepted every flag (tests/docs_flags.py), then stops.
FLAGS = (
    r"^((srun\s+)?(\.venv/bin/)?python\s+(trainer/\S+\.py|-m\s+(trainer|benchmarks)\.)"
    r"|torchrun\s)"
)
# Run as written against the live service and app.
RUN = r"^(curl\s|sleep\s|do$|done$|\w+=\$\(curl\s|while\s|until\s|\w+=\S*$|\w+=\"[^\"]*\"$)"


VALUE = r"""(?:"[^"]*"|'[^']*'|\$\w\S*|[^\s"'$(]\S*|)"""  # a VAR=value word's value


@dataclass
class Block:
    path: str
    line: int
    lang: str
    body: str

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def doc_files() -> list[str]:
    return ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]


def blocks() -> list[Block]:
    """Every fenced block (```lang ... ```) of the docs, with the line it starts on."""
    out = []
    for name in doc_files():
        text = (ROOT / name).read_text()
        for m in re.finditer(r"^```([\w-]*)[^\n]*\n(.*?)^```", text, re.S | re.M):
            line = text[: m.start()].count("\n") + 1
            out.append(Block(name, line, m.group(1).lower(), m.group(2)))
    return out


def commands(body: str) -> list[str]:
    """The logical commands of a shell block: continuation lines joined, comment lines and
    blank lines dropped."""
    out, current = [], ""
    for raw in body.splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):  # a comment line inside a continued command
            continue
        current = f"{current} {line}" if current else line
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        out.append(current)
        current = ""
    if current:
        out.append(current)
    return out


def bare(command: str) -> str:
    """``command`` without its leading ``VAR=value`` words (a lone assignment stays)."""
    return re.sub(rf"^(\w+={VALUE}\s+)+(?=\S)", "", command)


def classify(block: Block, command: str) -> tuple[str, str]:
    """("run" | "flags" | "skip", reason) for one command of ``block``."""
    if block.path in FILE_SKIPS:
        return "skip", FILE_SKIPS[block.path]
    text = bare(command)
    for pattern, reason in SKIPS:
        if re.search(pattern, text):
            return "skip", reason
    if re.search(FLAGS, text):
        return "flags", "long on real data: the flags are checked by the command itself"
    if re.search(RUN, text):
        return "run", "runs against the live service"
    return "unclassified", f"{block.where}: no rule says how to test {command!r}"


def looks_like_commands(body: str) -> bool:
    """Whether an untagged block holds shell or Python commands (it must then be tagged)."""
    starts = ("curl ", "python ", ".venv/bin/python", "make ", "docker ", "import ", "from ")
    return any(line.strip().startswith(starts) for line in body.splitlines())


FLAGS_DRIVER = r"""
import argparse, pathlib, runpy, sys, traceback


class Parsed(BaseException):
    pass


original = argparse.ArgumentParser.parse_args


def parse_then_stop(self, args=None, namespace=None):
    original(self, args, namespace)  # exits 2, with argparse's message, on a bad flag
    raise Parsed


def check(argv):
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.argv = argv
            runpy.run_path(argv[0], run_name="__main__")
    except Parsed:
        return None
    except SystemExit as exc:
        return f"exited {exc.code}"
    except Exception:
        return traceback.format_exc(limit=3)
    return "the command ended without parsing its flags"


argparse.ArgumentParser.parse_args = parse_then_stop
failures = []
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.argv")):
    argv = path.read_bytes().split(b"\0")[:-1]
    argv = [a.decode() for a in argv]
    why = check(argv)
    sys.stderr.write(f"{'ok' if why is None else 'FAILED'}: {' '.join(argv)}\n")
    if why is not None:
        failures.append(f"{' '.join(argv)}: {why}")
if failures:
    sys.exit("\n".join(failures))
"""


def flags_command(command: str) -> str:
    """``command`` with its interpreter (``python``, ``srun python``, ``torchrun [opts]``)
    replaced by the shell function ``check_flags`` that runs FLAGS_DRIVER."""
    prefix = re.match(rf"^((?:\w+={VALUE}\s+)*)", command).group(1)
    rest = command[len(prefix) :]
    rest = re.sub(r"^(srun\s+)?(\.venv/bin/)?python\s+", "check_flags ", rest)
    rest = re.sub(r"^torchrun\s+(--\S+\s+)*", "check_flags ", rest)
    return prefix + rest
