"""Fixtures shared by the test suites of every package (both environments load this file: standard library only)."""
import hashlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def _strict_json(text: str):
    """``json.loads`` as a strict parser (JavaScript's JSON.parse, jq) reads: NaN / Infinity refused."""
    def refuse(name):
        raise ValueError(f"not JSON: {name}")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def strict_json():
    """The strict JSON reader: files the tools write must parse where Python's lenient ``json`` is not used."""
    return _strict_json


def _generate(module: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"{module}.demo_data", "--out", str(out), *extra],
                          capture_output=True, text=True, check=True)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def demo_generator(tmp_path):
    """``generate(module) -> folder``: runs ``python -m <module>.demo_data`` and checks the rules every
    generator shares (same bytes on a second run, the demo marker written, a folder of user data left alone
    even with ``--force``), then returns the generated folder for the task's own format checks."""
    def generate(module: str) -> Path:
        first, again, user = tmp_path / "demo", tmp_path / "again", tmp_path / "mine"
        _generate(module, first)
        _generate(module, again)
        assert _digest(first) == _digest(again)
        assert (first / "DEMO_DATA.txt").is_file()
        user.mkdir()
        (user / "precious.txt").write_text("real data")
        result = _generate(module, user, "--force")  # --force rewrites demo data only
        assert "leaving it alone" in result.stderr
        assert [p.name for p in user.iterdir()] == ["precious.txt"]
        return first
    return generate


@pytest.fixture(scope="session")
def readme_commands():
    """``commands(readme) -> [command line]``: the lines of a README's bash blocks as ``make check-docs`` reads
    them (tools/check_docs.py: continuation lines joined, comments dropped)."""
    spec = importlib.util.spec_from_file_location("check_docs", Path(__file__).parent / "tools" / "check_docs.py")
    check_docs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check_docs)
    return lambda readme: [command for _, command in check_docs.commands(Path(readme))]


@pytest.fixture(scope="session")
def check_help():
    """``check(script, heavy)``: ``python <script> --help`` in a fresh interpreter exits 0, prints its usage with no
    empty default ("(default: )", "[]", "None") and has loaded none of the top-level modules ``heavy``: the options
    are parsed before the frameworks are imported."""
    def check(script: Path, heavy: set[str]) -> str:
        code = "\n".join(["import runpy, sys", "sys.argv = [sys.argv[1], '--help']", "try:",
                          "    runpy.run_path(sys.argv[0], run_name='__main__')", "except SystemExit as e:",
                          "    assert not e.code, e.code",
                          f"loaded = {set(heavy)!r} & {{m.split('.')[0] for m in sys.modules}}",
                          "assert not loaded, loaded"])
        done = subprocess.run([sys.executable, "-c", code, str(script)], cwd=Path(__file__).parent,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, (script, done.stderr[-2000:])
        assert "usage:" in done.stdout, script
        assert not [e for e in ("(default: )", "(default: [])", "(default: None)") if e in done.stdout], script
        return done.stdout
    return check


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    end = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the run ended before it could be killed (nothing was cut): {err}")
        assert time.monotonic() < end, "timed out waiting for the moment to kill"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


@pytest.fixture(scope="session")
def kill_when():
    """``kill_when(proc, ready, timeout=300)``: SIGKILL the process ``proc`` as soon as ``ready()`` holds; fails when
    the process ends or the time runs out first (the kill tests of every package)."""
    return _kill_when
