"""The closed vocabulary of the shapes world: shapes, colours, numbers, relations.

Colours are chosen far apart in RGB (smallest pairwise distance ~95) and far from the
background, so the verifier can name them after blur and JPEG. Shapes are axis-aligned
and chosen so simple mask statistics separate them: a square fills its box, a circle
~79% of it, a diamond and an upward triangle ~50% (the triangle's mass sits low).
"""

SHAPES = ("circle", "square", "triangle", "diamond")

COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 130, 20),
    "yellow": (240, 220, 50),
    "green": (50, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}

BACKGROUND = (235, 235, 235)

NUMBERS = {"one": 1, "two": 2, "three": 3, "four": 4}

RELATIONS = ("left of", "right of", "above", "below")

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")

PLURALS = {s: s + "s" for s in SHAPES}
