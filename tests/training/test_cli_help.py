"""Every command line's --help stands on its own (issue 18): a description, no pointer to a docstring, no text
printed twice or joined by runs of spaces, and a help text for every option."""

from __future__ import annotations

import argparse
import importlib
import re
import sys

import pytest

CLIS = [
    "training.train", "training.eval", "training.demo", "training.build_shards", "training.build_cache",
    "training.throughput",
    "training.evaluation.layout", "training.tiny_assets", "training.toy_world.run",
    "training.toy_world.diagnose", "training.toy_world.base_model", "training.toy_world.study", "benchmarks.core",
    "benchmarks.frozen_cache",
    "kosmos_g_core.convert",
]


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


@pytest.mark.parametrize("module", CLIS)
def test_help_stands_on_its_own(module, monkeypatch, capsys):
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, args=None, namespace=None):
        seen.append(self)
        return original(self, args, namespace)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    monkeypatch.setattr(sys, "argv", [module, "--help"])
    main = importlib.import_module(module).main
    with pytest.raises(SystemExit) as done:
        main(["--help"]) if main.__code__.co_argcount else main()
    assert done.value.code in (0, None)
    text = capsys.readouterr().out
    assert seen and text.startswith("usage: python -m " + module)
    assert "docstring" not in text
    description = seen[0].description or ""
    assert description.strip(), f"{module}: --help has no description"
    first_line = " ".join(description.strip().splitlines()[0].split())
    assert " ".join(text.split()).count(first_line) == 1, f"{module}: the description is not printed exactly once"
    assert not re.search(r"\S {4,}--", text), f"{module}: a continuation line was joined by a run of spaces"
    for parser in _parsers(seen[0]):
        for action in parser._actions:
            assert action.help, f"{module} {parser.prog}: {action.option_strings or action.dest} has no help text"
