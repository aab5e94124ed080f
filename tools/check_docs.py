"""Run the shell commands the READMEs document, as a new user would after `make demo` (`make check-docs`).

Every line of a ```bash block in README.md and <task>/README.md is a command (backslash continuations joined,
comments dropped). It runs from the repository root with `python` meaning the task's venv, in the order the
README gives, and must end with status 0. A command still running after --timeout seconds has started its
work with its data found and its options accepted (a full default training takes minutes to hours): it is
stopped and counted as started. Commands that cannot run here are listed with the reason and not run:
placeholders a user fills in (FOLDER, HOST0, /path/to), the real data (../shared), several processes or
machines (torchrun, TF_CONFIG), and the make targets that are checks of their own (test, bench, figures).

    python tools/check_docs.py [--timeout 120] [--list] [README ...]
"""
from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = {"airbus_ships": ".venv-tf/bin/python"}  # every other task runs in .venv-torch
SKIP = [
    (re.compile(r"\.\./shared|/path/to|\s/data/"), "needs the real data or a user's own path"),
    (re.compile(r"\b(FOLDER|HOST\w*|OUT|RUN|I/N|NODE_RANK)\b|my_patches/|\bpatches/|best\.pt\b(?!.*runs/)"),
     "a placeholder to fill in"),
    (re.compile(r"torchrun|TF_CONFIG|--strategy|--device cuda"), "several processes, machines or a GPU"),
    (re.compile(r"^make (setup|clean|demo|test|test-fast|lint|bench|figures|check-\S+|bench-\S+|figures-\S+|"
                r"docs-\S+)(\s|$)"), "a check or benchmark of its own (make test, make bench, make figures)"),
]


def commands(readme: Path) -> list[tuple[int, str]]:
    """``(block number, command)`` for the ```bash / ```sh blocks of ``readme``, continuations joined, comments
    dropped."""
    out, block, pending, number = [], False, "", 0
    for line in readme.read_text().splitlines():
        if line.startswith("```"):
            block = not block and line.strip() in ("```bash", "```sh")
            number += block
            continue
        if not block:
            continue
        line = pending + strip_comment(line).strip()
        if line.endswith("\\"):
            pending = line[:-1].rstrip() + " "
            continue
        pending = ""
        if line:
            out.append((number, line))
    return out


def strip_comment(line: str) -> str:
    """``line`` without a trailing shell comment (a '#' at the start or after a blank, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def skip_reason(command: str) -> str | None:
    return next((why for pattern, why in SKIP if pattern.search(command)), None)


def with_venv(command: str) -> str:
    """``python x/...`` and ``python -m x.`` run in the venv of the task they name."""
    def venv(match: re.Match) -> str:
        task = re.match(r"(?:-m\s+)?(\w+)", match.group(1)).group(1)
        return f"{VENV.get(task, '.venv-torch/bin/python')} {match.group(1)}"
    return re.sub(r"(?<![\w/.-])python3?\s+((?:-m\s+)?\w+)", venv, command)


def run(command: str, timeout: float) -> tuple[str, float, str]:
    """``("ok" | "started" | "failed", seconds, output tail)``."""
    start = time.monotonic()
    proc = subprocess.Popen(["bash", "-o", "pipefail", "-c", command], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (status {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = proc.communicate()
        broke = "Traceback" in output or re.search(r"(?im)^error\b", output)
        status = "failed (an error while running)" if broke else "started"
    return status, time.monotonic() - start, output[-1500:]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("readmes", nargs="*", type=Path, help="README files (all of the repository's when none given)")
    p.add_argument("--timeout", type=float, default=120, help="seconds before a running command counts as started")
    p.add_argument("--list", action="store_true", help="print what would run or be skipped, run nothing")
    args = p.parse_args(argv)
    tracked = subprocess.run(["git", "ls-files", "README.md", "*/README.md"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
    readmes = args.readmes or [ROOT / name for name in tracked if name.count("/") <= 1]
    failed = 0
    for readme in readmes:
        print(f"== {readme.resolve().relative_to(ROOT)}")
        skipped_blocks = set()
        for block, command in commands(readme):
            why = skip_reason(command)
            if not why and "common.shard merge" in command and block in skipped_blocks:
                why = "joins the shards of a command above that was skipped"
            if why:
                skipped_blocks.add(block)
                print(f"   skipped  {command[:100]}  ({why})")
                continue
            if args.list:
                print(f"   run      {with_venv(command)[:140]}")
                continue
            status, seconds, tail = run(with_venv(command), args.timeout)
            print(f"   {status:8s} {command[:100]}  ({seconds:.0f} s)")
            if status.startswith("failed"):
                failed += 1
                print("   | " + tail.strip().replace("\n", "\n   | "))
    print(f"{failed} command(s) failed" if failed else "every command ran or started")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
