"""tools/check_docs.py: which README lines become commands, which are skipped, and how a run is judged."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location("check_docs", Path(__file__).parents[1] / "check_docs.py")
check_docs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(check_docs)


def test_commands_join_continuations_and_drop_comments(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("text\n```bash\n# a comment\nmake demo-x   # what it does\npython a/b.py --x 1 \\\n"
                      "    --y '#not a comment'\n```\n```python\nprint('not shell')\n```\n```sh\nmake help\n```\n")
    assert check_docs.commands(readme) == [(1, "make demo-x"), (1, "python a/b.py --x 1 --y '#not a comment'"),
                                           (2, "make help")]


def test_skip_reasons_and_venvs():
    assert check_docs.skip_reason("make bench-wood DATA_ROOT=../shared/data")
    assert check_docs.skip_reason("python wood_anomaly/train.py --data FOLDER --out runs/x")
    assert check_docs.skip_reason("torchrun --nproc_per_node=2 minerals/train.py")
    assert check_docs.skip_reason("make test")
    assert check_docs.skip_reason("make predict-wood") is None
    assert check_docs.with_venv("python airbus_ships/test.py --x") == ".venv-tf/bin/python airbus_ships/test.py --x"
    merge = "-m common.shard merge r.json"
    assert check_docs.with_venv(f"python {merge}") == f".venv-torch/bin/python {merge}"
    assert check_docs.with_venv(".venv-tf/bin/python airbus_ships/t.py") == ".venv-tf/bin/python airbus_ships/t.py"


def test_run_judges_status_and_timeout():
    assert check_docs.run("true", timeout=10)[0] == "ok"
    assert check_docs.run("exit 3", timeout=10)[0].startswith("failed")
    assert check_docs.run("echo working; sleep 30", timeout=1)[0] == "started"
    assert check_docs.run("echo 'error: bad file'; sleep 30", timeout=1)[0].startswith("failed")
