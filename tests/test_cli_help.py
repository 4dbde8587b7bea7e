"""The command line explains itself: a description and help text on every command and option,
``--version``, and ``--out`` naming a folder everywhere."""

from __future__ import annotations

import argparse
import importlib
import inspect
import subprocess
import sys
from importlib import metadata

import pytest

from predilect.cli import COMMANDS
from predilect.cli import main as cli_main


def _parsers(name: str) -> list[argparse.ArgumentParser]:
    module = importlib.import_module(COMMANDS[name][0])
    if name == "train":
        return [module._parser(stage) for stage in module.STAGES]
    parameters = inspect.signature(module._parser).parameters
    return [module._parser(p) for p in ("cpu", "gpu")] if parameters else [module._parser()]


def _all(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return [parser, *(p for a in subs for p in a.choices.values())]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_has_description_and_help_on_every_option_when_parsed(name: str) -> None:
    for parser in (q for p in _parsers(name) for q in _all(p)):
        assert (parser.description or "").strip(), f"{parser.prog} has no description"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            if action.help == argparse.SUPPRESS:
                continue
            text = (action.help or "").strip()
            assert text and not text.startswith("(default"), f"{parser.prog} {action.option_strings or action.dest}"
        outs = [a for a in parser._actions if "--out" in a.option_strings]
        for action in outs:  # --out names a folder everywhere, and says so
            words = (action.help or "").lower()
            assert any(w in words for w in ("folder", "directory", "repository")), f"{parser.prog} --out: {words}"


def test_predilect_prints_installed_version_when_asked(capsys) -> None:
    assert cli_main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"predilect {metadata.version('predilect')}"
    done = subprocess.run([sys.executable, "-m", "predilect.cli", "-V"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("predilect ")


def test_train_help_lists_stages_and_what_a_run_folder_holds_when_asked(capsys) -> None:
    from predilect.training.train_cli import main

    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert "pretrain " in text and "finetune " in text and "config.json" in text and "--resume" in text
