"""A tagger that needs no model: the noun phrases of the caption are the entity names."""

from __future__ import annotations

import re
from collections.abc import Sequence

from mtv.label.base import ExpertInfo, LabelInput, Tagger

# Words that end a noun phrase: determiners, numbers, prepositions, conjunctions, verbs, and the
# relation words of captions. Generic nouns ("photo", "objects") are not entities.
_BOUNDARY_WORDS = """
a an the this that these those some any each every no one two three four five six seven eight
nine ten on in at of to with by from behind near under over above below beside between into onto
left right front next nearby closest nearest farthest it its is are was were be been has have
there here and or but while as than very
"""
BOUNDARY = frozenset(_BOUNDARY_WORDS.split())
GENERIC = {"photo", "image", "picture", "rendering", "render", "objects", "object", "scene", "view"}
MAX_WORDS = 5


def noun_phrases(caption: str) -> list[str]:
    """Maximal runs of content words between boundaries, in order, without repeats:
    'Two red cubes left of a small shiny sphere.' -> ['red cubes', 'small shiny sphere']."""
    phrases: list[str] = []
    run: list[str] = []

    def close() -> None:
        if run and run[-1] not in GENERIC and len(run) <= MAX_WORDS:
            phrase = " ".join(w for w in run if w not in GENERIC)
            if phrase and phrase not in phrases:
                phrases.append(phrase)
        run.clear()

    for token in re.findall(r"[a-z0-9]+(?:-[a-z0-9]+)*|[^\sa-z0-9]", caption.lower()):
        # A gerund ("a dog playing with ...") ends the phrase too.
        gerund = len(token) > 4 and token.endswith("ing")
        if not token[0].isalnum() or token in BOUNDARY or token.isdigit() or gerund:
            close()
        else:
            run.append(token)
    close()
    return phrases


class CaptionTagger(Tagger):
    def info(self) -> ExpertInfo:
        return ExpertInfo("caption_noun_phrases", "1", {"max_words": MAX_WORDS})

    def tags(self, inputs: Sequence[LabelInput]) -> list[list[str]]:
        return [noun_phrases(item.caption) for item in inputs]
