"""The shared rules of the demo-data generators (each task's tests check its own generator and format)."""
import subprocess
import sys

import numpy as np
import pytest

from common import demo


def test_claim_output_and_smooth_noise(tmp_path):
    assert demo.claim_output(tmp_path / "new")  # missing folder: created, may write
    (tmp_path / "new" / "x").write_text("x")
    assert not demo.claim_output(tmp_path / "new", force=True)  # user data, even with force
    demo.write_marker(tmp_path / "new", "test")
    assert demo.is_demo(tmp_path / "new")
    assert demo.claim_output(tmp_path / "new", force=True)  # demo data may be rewritten with force
    noise = demo.smooth_noise((50, 70), np.random.default_rng(0), scale=20)
    assert noise.shape == (50, 70) and noise.min() == 0 and noise.max() == pytest.approx(1)


def test_common_imports_no_framework():
    code = ("import sys, common, common.io, common.tiling, common.metrics, common.demo, common.shard; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'tensorflow', 'keras', 'jax')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
