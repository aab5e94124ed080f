"""The bad-input corpus itself: what common.io makes of each case (the tools' tests assert their own outcome)."""
import numpy as np
import pytest

from common import io
from common.tests.bad_inputs import BROKEN, EXACT, READABLE, few_colours, write_corpus


def test_corpus_cases_read_as_declared(tmp_path):
    base = few_colours()
    cases = write_corpus(tmp_path, base)
    assert [p.name for p in io.list_images(tmp_path)] == [c.name for c in cases]  # folders and dead links too
    for case in cases:
        path = tmp_path / case.name
        if case.kind == EXACT:
            np.testing.assert_array_equal(io.read_rgb(path), base, err_msg=case.name)
        elif case.kind == READABLE:
            assert io.read_rgb(path).shape == base.shape, case.name
        elif case.name == "one_pixel.png":  # decodes: refusing a degenerate size is each tool's rule
            assert io.read_rgb(path).shape == (1, 1, 3)
        else:
            assert case.kind == BROKEN
            with pytest.raises(io.ImageReadError) as err:
                io.read_rgb(path)
            assert str(err.value).startswith(str(path)) and case.reason in str(err.value).lower(), str(err.value)


def test_readable_only_corpus(tmp_path):
    cases = write_corpus(tmp_path, few_colours(), broken=False)
    assert {c.kind for c in cases} == {EXACT, READABLE}
