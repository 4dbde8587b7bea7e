"""The controlled vocabulary of the default catalog, and the concepts each default category is described with.

The default catalog (``predilect/catalogs/default.json``) describes every category with phrases
from one vocabulary, in four templated descriptions (summary; fundus appearance; usual
location; OCT) plus one expert note. ``VOCABULARY`` holds the phrases: where a finding lies
(``location``), how it looks on a colour fundus photograph (``fundus``) and on OCT (``oct``);
``DEFAULT_CONCEPTS`` the keys each default category's descriptions are composed of, and
``describe`` composes them (a test checks the catalog's descriptions are exactly that).
Categories share concepts, so a category left out of training is still described in phrases
the trained categories taught (zero-shot); the phantom's registry draws a subset of each
category's concepts, so what is drawn is what the descriptions say. Data: ``vocabulary.json``
beside this module.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

VOCABULARY_FILE = Path(__file__).with_name("vocabulary.json")


@dataclass(frozen=True)
class Concepts:
    """The vocabulary keys one default category is described with."""

    fundus: tuple[str, ...]
    where: tuple[str, ...]
    oct: tuple[str, ...]
    oct_where: tuple[str, ...]


def _load() -> tuple[dict[str, dict[str, str]], dict[str, Concepts]]:
    data = json.loads(VOCABULARY_FILE.read_text(encoding="utf-8"))
    concepts = {
        disease: Concepts(**{kind: tuple(keys) for kind, keys in entry.items()})
        for disease, entry in data["concepts"].items()
    }
    return data["vocabulary"], concepts


VOCABULARY, DEFAULT_CONCEPTS = _load()
"""Kind (``location``, ``fundus``, ``oct``) -> concept key -> phrase; default category id -> its ``Concepts``."""


def _join(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _phrases(kind: str, keys: tuple[str, ...]) -> list[str]:
    return [VOCABULARY[kind][k] for k in keys]


def describe(concepts: Concepts) -> tuple[str, str, str, str]:
    """Four descriptions built from the vocabulary: summary, fundus, location, OCT."""
    fundus, where = _phrases("fundus", concepts.fundus), _phrases("location", concepts.where)
    oct_, oct_where = _phrases("oct", concepts.oct), _phrases("location", concepts.oct_where)
    return (
        f"{_join(fundus).capitalize()} {where[0]}; {_join(oct_)} on OCT.",
        f"On a colour fundus photograph: {_join(fundus)}.",
        f"Usual location: {_join(where)}.",
        f"On OCT: {_join(oct_)} {_join(oct_where)}.",
    )
