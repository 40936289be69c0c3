"""Captions of mini-world images: what is visible, with attributes, counts and spatial relations,
drawn from varied templates. The caption only mentions objects the image shows."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from mtv.world.scene import SceneObject

NUMBERS = ("no", "one", "two", "three", "four", "five", "six")
PLURAL = {"octahedron": "octahedra"}
FLOOR_WORDS = {
    "checkered": "checkered",
    "striped": "striped",
    "tiled": "tiled",
    "speckled": "speckled",
    "plain": "plain",
}


@dataclass(frozen=True)
class Visible:
    """An object as seen in one image: its box centre (normalised) and camera depth."""

    obj: SceneObject
    cx: float
    cy: float
    depth: float


def plural(shape: str) -> str:
    return PLURAL.get(shape, shape + "s")


def with_article(phrase: str) -> str:
    """'an orange cube', 'a red cube': the phrase as captions write it."""
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def noun_phrase(obj: SceneObject, rng: np.random.Generator, detail: float = 0.5) -> str:
    """'a small shiny red cube', with size and material mentioned at random."""
    words = []
    if rng.random() < detail:
        words.append(obj.size)
    if rng.random() < detail * 0.6:
        words.append(obj.material)
    words += [obj.color, obj.shape]
    return with_article(" ".join(words))


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def inventory(visible: list[Visible], rng: np.random.Generator) -> str:
    """Group equal (colour, shape) objects: 'two red cubes and a small blue sphere'."""
    groups = Counter((v.obj.color, v.obj.shape) for v in visible)
    parts = []
    for (color, shape), count in groups.items():
        if count == 1:
            obj = next(v.obj for v in visible if (v.obj.color, v.obj.shape) == (color, shape))
            parts.append(noun_phrase(obj, rng))
        else:
            parts.append(f"{NUMBERS[count]} {color} {plural(shape)}")
    order = rng.permutation(len(parts))
    return _join([parts[i] for i in order])


def relation(a: Visible, b: Visible) -> str:
    """How `a` stands to `b` in the image: left/right when they are apart sideways, otherwise
    in front of / behind by camera depth."""
    if abs(a.cx - b.cx) > 0.12:
        return "to the left of" if a.cx < b.cx else "to the right of"
    return "in front of" if a.depth < b.depth else "behind"


def caption(visible: list[Visible], floor: str, floor_color: str, rng: np.random.Generator) -> str:
    floor_text = f"{FLOOR_WORDS[floor]} {floor_color}" if floor == "plain" else FLOOR_WORDS[floor]
    if not visible:
        return f"An empty {floor_text} floor under an open sky."
    items = inventory(visible, rng)
    count = len(visible)
    template = rng.integers(6)
    if template == 0:
        text = f"{items} on a {floor_text} floor."
    elif template == 1:
        noun = "object" if count == 1 else "objects"
        text = f"{NUMBERS[count].capitalize()} {noun} on a {floor_text} floor: {items}."
    elif template == 2 and count >= 2:
        i, j = rng.choice(count, size=2, replace=False)
        a, b = visible[i], visible[j]
        text = f"{noun_phrase(a.obj, rng)} {relation(a, b)} {noun_phrase(b.obj, rng)}"
        rest = [v for k, v in enumerate(visible) if k not in (i, j)]
        text += f", with {inventory(rest, rng)} nearby." if rest else f" on a {floor_text} floor."
    elif template == 3:
        text = f"A rendering of {items}."
    elif template == 4:
        nearest = min(visible, key=lambda v: v.depth)
        text = f"{items}; the closest one is {noun_phrase(nearest.obj, rng, detail=0.3)}."
    else:
        text = f"A {floor_text} floor with {items} on it."
    return text[0].upper() + text[1:]
