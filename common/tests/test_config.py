import argparse
from dataclasses import dataclass

import pytest

from common.config import HelpFormatter, add_config_args, field_comments, resumed_config


@dataclass
class Config:
    data: str = "data/x"  # folder of images
    epochs: int = 40  # passes over the data (100 % of it)
    lr: float = 1e-3  # peak learning rate; a comment may go on
    #                   on lines of its own
    seed: int = 0
    augment: bool = True  # random flips
    mode: str = "crop"  # crop | resize

    def resolve(self) -> "Config":
        fake: int = 1  # an annotated local in a method, not a field: the comment parser must skip it
        assert fake
        return self


def parse(argv, **kw):
    p = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_config_args(p, Config, **kw)
    return p, Config(**vars(p.parse_args(argv)))


def test_field_comments_read_the_comment_and_its_continuation():
    assert field_comments(Config) == {"data": "folder of images", "epochs": "passes over the data (100 % of it)",
                                      "lr": "peak learning rate; a comment may go on on lines of its own",
                                      "seed": "", "augment": "random flips", "mode": "crop | resize"}


def test_options_take_type_default_and_help():
    p, cfg = parse([])
    assert cfg == Config()
    _, cfg = parse(["--epochs", "3", "--lr", "0.5", "--no-augment", "--data", "y"])
    assert (cfg.epochs, cfg.lr, cfg.augment, cfg.data) == (3, 0.5, False, "y")
    assert isinstance(cfg.epochs, int) and isinstance(cfg.lr, float)
    text = p.format_help()
    assert "peak learning rate; a comment may go on on lines of its own (default: 0.001)" in " ".join(text.split())
    assert "100 % of it" in " ".join(text.split())  # a '%' in a comment does not break argparse


def test_choices_and_bad_values_are_refused():
    _, cfg = parse(["--mode", "resize"], choices={"mode": ["crop", "resize"]})
    assert cfg.mode == "resize"
    with pytest.raises(SystemExit):
        parse(["--mode", "other"], choices={"mode": ["crop", "resize"]})
    with pytest.raises(SystemExit):
        parse(["--epochs", "many"])


def test_unsupported_field_type_is_named():
    @dataclass
    class Bad:
        sizes: list = None  # no command-line form

    with pytest.raises(TypeError, match="Bad.sizes"):
        add_config_args(argparse.ArgumentParser(), Bad)


def test_resumed_config_keeps_the_runs_settings_but_the_ones_that_may_change():
    @dataclass
    class Run:
        lr: float = 0.1  # learning rate
        threads: int = 2  # CPU threads
        new: str = "a"  # an option newer than the saved run

    run, overridden = resumed_config(Run(lr=0.5, threads=4, new="b"), {"lr": 0.1, "threads": 1}, ("threads",))
    assert run == Run(lr=0.1, threads=4, new="b")  # saved lr; threads may change; a field the run lacks stays
    assert overridden == [("lr", 0.1, 0.5)]


def test_help_formatter_leaves_out_empty_and_already_stated_defaults():
    p = argparse.ArgumentParser(formatter_class=HelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="passes")
    p.add_argument("--note", default="", help="free text")
    p.add_argument("--files", nargs="*", default=[], help="inputs")
    p.add_argument("--model", default=None, help="checkpoint")
    p.add_argument("--shard", default=None, help="one shard (default: all of it)")
    text = " ".join(p.format_help().split())
    assert "passes (default: 3)" in text
    assert "(default: )" not in text and "(default: [])" not in text and "(default: None)" not in text
    assert text.count("(default:") == 2
