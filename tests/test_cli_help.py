"""What a new user reads first: `thorax ... --help` (every option explained, its default shown, the label
names where labels are taken) and `thorax models show` (a summary; the whole card with --json).
No torch: .ci/run runs these on Python 3.13 too."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from thoraxclient.model_card import ModelCard

from tests.conftest import REPO
from thorax.cli import build_parser
from thorax.labels import NIH_LABELS

STORE = REPO / "model_store"
DEFAULT = (STORE / "default").read_text().strip()


def thorax(*args: str, store: Path = STORE) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "THORAX_MODEL_STORE": str(store)}
    return subprocess.run([sys.executable, "-m", "thorax.cli", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=60)  # fmt: skip


def _commands(parser: argparse.ArgumentParser, words: tuple[str, ...] = ()):
    """(words, parser) of every subcommand, nested ones (`dataset build`) too."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*words, name), sub
                yield from _commands(sub, (*words, name))


COMMANDS = dict(_commands(build_parser()))


def _option_entries(help_text: str) -> dict[str, str]:
    """The help of each option by its last option string, whitespace collapsed."""
    entries: dict[str, str] = {}
    current = None
    section = help_text.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    for line in section.splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            entries[current] = line
        elif current:
            entries[current] += " " + line
    return {k: " ".join(v.split()) for k, v in entries.items()}


def _showable(default: object) -> bool:
    return not (default is None or default is False or default in ([], "") or default is argparse.SUPPRESS)


@pytest.mark.parametrize("words", sorted(COMMANDS), ids=" ".join)
def test_every_option_has_help_and_shows_its_default(words: tuple[str, ...]) -> None:
    parser = COMMANDS[words]
    result = thorax(*words, "--help")
    assert result.returncode == 0 and result.stderr == "", result.stderr
    entries = _option_entries(result.stdout)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        name = " ".join(action.option_strings) or action.dest
        assert action.help and action.help.strip(), f"thorax {' '.join(words)} {name}: no help"
        if action.option_strings and _showable(action.default):
            entry = next(v for k, v in entries.items() if k in action.option_strings)
            assert "default" in entry, f"thorax {' '.join(words)}: {entry!r} does not give its default"


@pytest.mark.parametrize(
    "words, shown",
    [
        (("generate",), ["--count COUNT images (default: 100)", "images per tar shard (default: 1000)"]),
        (("serve",), ["address to listen on (default: 127.0.0.1)", "TCP port (default: 8000)"]),
        (("sample",), ["images (default: 16)", "output folder (default: thorax-samples)"]),
        (("dataset", "build"), ["images per tar shard (default: 1000)", "(default: png)"]),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_the_defaults_a_user_asks_for_are_in_the_help(words: tuple[str, ...], shown: list[str]) -> None:
    text = " ".join(thorax(*words, "--help").stdout.split())
    for expected in shown:
        assert expected in text, text


@pytest.mark.parametrize("words", [("sample",), ("generate",), ("dataset", "build")], ids=" ".join)
def test_the_help_lists_the_label_names_where_labels_go(words: tuple[str, ...], tmp_path: Path) -> None:
    card = json.loads((STORE / DEFAULT / "model_card.json").read_text())
    text = " ".join(thorax(*words, "--help").stdout.split())
    assert f"labels of the default model ({DEFAULT})" in text
    assert ", ".join(card["labels"]["names"]) in text
    empty = " ".join(thorax(*words, "--help", store=tmp_path).stdout.split())  # no model: the NIH names
    assert "labels of the NIH ChestX-ray14 set" in empty and ", ".join(NIH_LABELS) in empty


def test_models_show_is_a_summary_and_json_is_the_whole_card() -> None:
    card = ModelCard.model_validate_json((STORE / DEFAULT / "model_card.json").read_text())
    result = thorax("models", "show")
    assert result.returncode == 0, result.stderr
    text, lines = " ".join(result.stdout.split()), result.stdout.splitlines()
    assert lines[0].startswith(f"{DEFAULT} (the default model)") and len(lines) < 80
    assert f"{card.architecture.resolution} px radiographs" in text
    assert ", ".join(card.labels.names) in text
    for source in card.training_data.sources:
        assert f"licence: {source.licence}" in text and source.attribution in text
    assert f"memorisation: {card.evaluation['memorisation_flagged']} generated images flagged" in text
    assert f"mean AUC {card.evaluation['tstr_mean_auc_synthetic_trained']:.3f}" in text
    assert all(" ".join(limitation.split()) in text for limitation in card.limitations)
    assert f"thorax models show {DEFAULT} --json" in text

    whole = thorax("models", "show", DEFAULT, "--json")
    assert whole.returncode == 0 and json.loads(whole.stdout) == card.model_dump(mode="json")
    other = thorax("models", "show", "cxr64/2")  # a model that is not the default: no "(the default model)"
    assert other.returncode == 0 and other.stdout.startswith("cxr64/2: ")
    adult = thorax("models", "show", "nih64/1")  # a one-cohort model names its cohort
    assert adult.returncode == 0 and adult.stdout.startswith("nih64/1: ") and "cohort: " in adult.stdout
    wrong = thorax("models", "list", "--json")
    assert wrong.returncode == 2 and "models: --json goes with show, not list" in wrong.stderr
