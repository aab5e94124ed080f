"""Fixtures shared by the test suites of every package (both environments load this file: standard library only)."""
import json

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
