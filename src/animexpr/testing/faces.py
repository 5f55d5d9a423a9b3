"""Parametric cartoon faces: one identity drawn in each of the four expressions, with the true answer.

An identity fixes everything but the expression: face shape and size, skin, hair colour and style, eye colour
and shape, background, accessory, and the pose (position, scale, rotation). Drawing it in another expression
changes only the expression region (brows, eyes, mouth, cheeks for tears and blush), which `render` returns as
a mask, so a translation can be scored against the true target image, and a mask against the true region.

Anime conventions for the expressions (angry, sad, smile, surprised):
- angry: brows slanting down toward the centre, narrowed eyes, a frown or gritted teeth;
- sad (crying): brows raised at the centre, half-lowered lids, tears, mouth turned down;
- smile: mouth turned up (or an open smile), eyes open or closed into arcs, blush;
- surprised: brows raised high, round eyes with small pupils, an open O mouth.

Everything is drawn at twice the size and reduced, for smooth edges; a 128 px face takes about a millisecond.
"""

from __future__ import annotations

import io
import itertools
import math
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

EXPRESSIONS = ("angry", "sad", "smile", "surprised")
Colour = tuple[int, int, int]

_SUPERSAMPLE = 2
_CANVAS = 256  # identities are laid out on this grid, then drawn at size * _SUPERSAMPLE
_SKIN_TONES: tuple[Colour, ...] = ((255, 228, 206), (250, 214, 190), (255, 236, 222), (236, 196, 168))
_HAIR_COLOURS: tuple[Colour, ...] = (
    (40, 32, 38), (120, 72, 40), (236, 206, 120), (220, 110, 150), (90, 120, 220),
    (180, 40, 50), (230, 230, 240), (90, 170, 110), (150, 100, 200), (250, 150, 60),
)  # fmt: skip
_EYE_COLOURS: tuple[Colour, ...] = (
    (60, 110, 200), (40, 150, 90), (170, 60, 60), (150, 90, 40), (140, 70, 180), (200, 150, 40),
)  # fmt: skip
_HAIR_STYLES = ("short", "long", "twintails", "spiky")
_ACCESSORIES = ("none", "ribbon", "hairclip", "hat")
# Where each brow's inner end (toward the nose) and outer end sit, in eye heights below the neutral line:
# angry brows slant down to the centre, sad ones rise at the centre, surprised ones are raised high.
BROW_DROP: dict[str, tuple[float, float]] = {
    "angry": (0.45, -0.3),
    "sad": (-0.45, 0.15),
    "smile": (-0.05, -0.05),
    "surprised": (-0.55, -0.45),
}
_INK: Colour = (40, 28, 30)
_TEAR: Colour = (120, 190, 255)
_BLUSH: Colour = (255, 150, 160)
_MOUTH: Colour = (150, 50, 60)


@dataclass(frozen=True)
class FaceIdentity:
    """Everything about a drawn face except its expression, in _CANVAS units."""

    seed: int
    background: Colour
    background_stripe: Colour
    stripe_angle: float
    centre_x: float
    centre_y: float
    face_radius: float
    chin: float  # 0 round, 1 pointed
    skin: Colour
    hair: Colour
    hair_style: str
    eye_colour: Colour
    eye_width: float
    eye_height: float
    eye_spacing: float
    smile_closes_eyes: bool
    angry_teeth: bool
    accessory: str
    accessory_colour: Colour
    rotation: float  # degrees


@dataclass(frozen=True)
class RenderedFace:
    image: np.ndarray  # (size, size, 3) uint8 RGB
    region: np.ndarray  # (size, size) bool: where the expression lives (the same for all four expressions)


def random_identity(seed: int) -> FaceIdentity:
    """A deterministic identity for `seed`."""
    rng = random.Random(seed)
    radius = rng.uniform(62, 78)
    return FaceIdentity(
        seed=seed,
        background=_random_colour(rng, 150, 250),
        background_stripe=_random_colour(rng, 120, 240),
        stripe_angle=rng.uniform(0, 180),
        centre_x=_CANVAS / 2 + rng.uniform(-12, 12),
        centre_y=_CANVAS / 2 + rng.uniform(-4, 14),
        face_radius=radius,
        chin=rng.uniform(0, 1),
        skin=rng.choice(_SKIN_TONES),
        hair=rng.choice(_HAIR_COLOURS),
        hair_style=rng.choice(_HAIR_STYLES),
        eye_colour=rng.choice(_EYE_COLOURS),
        eye_width=radius * rng.uniform(0.24, 0.3),
        eye_height=radius * rng.uniform(0.26, 0.34),
        eye_spacing=radius * rng.uniform(0.4, 0.48),
        smile_closes_eyes=rng.random() < 0.5,
        angry_teeth=rng.random() < 0.4,
        accessory=rng.choice(_ACCESSORIES),
        accessory_colour=_random_colour(rng, 40, 255),
        rotation=rng.uniform(-12, 12),
    )


def render(identity: FaceIdentity, expression: str, size: int = 128) -> RenderedFace:
    """`identity` with `expression` (one of EXPRESSIONS) at `size` px, and its expression region."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; known: {', '.join(EXPRESSIONS)}")
    scale = size * _SUPERSAMPLE / _CANVAS
    face = Image.new("RGBA", (size * _SUPERSAMPLE,) * 2, (0, 0, 0, 0))
    _Painter(ImageDraw.Draw(face), identity, scale).paint(expression)
    region = Image.new("L", face.size, 0)
    _Painter(ImageDraw.Draw(region), identity, scale).paint_region()
    centre = _centre(identity, scale)
    face = face.rotate(identity.rotation, resample=Image.Resampling.BILINEAR, center=centre)
    region = region.rotate(identity.rotation, resample=Image.Resampling.NEAREST, center=centre)
    picture = _background(identity, face.size)
    picture.alpha_composite(face)
    image = picture.convert("RGB").resize((size, size), Image.Resampling.BOX)
    covered = np.asarray(region.resize((size, size), Image.Resampling.BOX)) > 0
    # Smoothing and rotation reach a pixel past each stroke: grow the region by that much.
    return RenderedFace(np.asarray(image), _grown(covered))


def _grown(mask: np.ndarray) -> np.ndarray:
    """`mask` and its 8 neighbours (a 3x3 dilation)."""
    padded = np.pad(mask, 1)
    height, width = mask.shape
    grown = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown


def render_png(identity: FaceIdentity, expression: str, size: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render(identity, expression, size).image).save(buffer, format="PNG")
    return buffer.getvalue()


def _random_colour(rng: random.Random, low: int, high: int) -> Colour:
    return (rng.randrange(low, high), rng.randrange(low, high), rng.randrange(low, high))


def _centre(identity: FaceIdentity, scale: float) -> tuple[float, float]:
    return (identity.centre_x * scale, identity.centre_y * scale)


def _background(identity: FaceIdentity, size: tuple[int, int]) -> Image.Image:
    """A plain colour crossed by broad stripes: busy enough that a model cannot just paint it flat."""
    picture = Image.new("RGBA", size, (*identity.background, 255))
    draw = ImageDraw.Draw(picture)
    width = size[0]
    angle = math.radians(identity.stripe_angle)
    dx, dy = math.cos(angle), math.sin(angle)
    for offset in range(-2 * width, 2 * width, width // 3):
        ox, oy = width / 2 - dy * offset, width / 2 + dx * offset
        draw.line(
            (ox - dx * 2 * width, oy - dy * 2 * width, ox + dx * 2 * width, oy + dy * 2 * width),
            fill=(*identity.background_stripe, 255),
            width=width // 8,
        )
    return picture


class _Painter:
    """Draws one identity on a canvas `scale` times _CANVAS: the face, or only its expression region."""

    def __init__(self, draw: ImageDraw.ImageDraw, identity: FaceIdentity, scale: float) -> None:
        self.draw = draw
        self.who = identity
        self.scale = scale

    # Geometry, in _CANVAS units
    @property
    def eye_y(self) -> float:
        return self.who.centre_y + self.who.face_radius * 0.08

    @property
    def brow_y(self) -> float:
        return self.eye_y - self.who.eye_height * 1.15

    @property
    def mouth_y(self) -> float:
        return self.who.centre_y + self.who.face_radius * 0.55

    def eye_x(self, side: int) -> float:
        return self.who.centre_x + side * self.who.eye_spacing

    def _xy(self, *points: float) -> list[float]:
        return [value * self.scale for value in points]

    def _width(self, units: float) -> int:
        return max(1, round(units * self.scale))

    def _stroke(self, points: list[tuple[float, float]], width: float) -> None:
        """An ink line through `points` with round ends and joints (PIL's joints leave gaps when thick)."""
        for (x0, y0), (x1, y1) in itertools.pairwise(points):
            self.draw.line(self._xy(x0, y0, x1, y1), fill=_INK, width=self._width(width))
        for x, y in points:
            self.draw.ellipse(self._xy(x - width / 2, y - width / 2, x + width / 2, y + width / 2), fill=_INK)

    # The whole face
    def paint(self, expression: str) -> None:
        self._hair_behind()
        self._face()
        self._hair_front()
        self._accessory()
        for side in (-1, 1):
            self._eye(expression, side)
            self._brow(expression, side)
        self._cheeks(expression)
        self._mouth(expression)

    def _hair_behind(self) -> None:
        who, r = self.who, self.who.face_radius
        colour = (*who.hair, 255)
        cx, cy = who.centre_x, who.centre_y
        if who.hair_style == "long":
            box = self._xy(cx - r * 1.12, cy - r * 0.6, cx + r * 1.12, cy + r * 1.55)
            self.draw.rounded_rectangle(box, radius=r * self.scale * 0.5, fill=colour)
        if who.hair_style == "twintails":
            for side in (-1, 1):
                tx = cx + side * r * 1.15
                self.draw.ellipse(
                    self._xy(tx - r * 0.32, cy - r * 0.5, tx + r * 0.32, cy + r * 1.3), fill=colour
                )
        self.draw.ellipse(self._xy(cx - r * 1.1, cy - r * 1.18, cx + r * 1.1, cy + r * 0.5), fill=colour)

    def _face(self) -> None:
        who, r = self.who, self.who.face_radius
        cx, cy = who.centre_x, who.centre_y
        skin = (*who.skin, 255)
        self.draw.ellipse(self._xy(cx - r, cy - r, cx + r, cy + r * 0.9), fill=skin)
        chin_y = cy + r * (0.95 + 0.25 * who.chin)
        self.draw.polygon(
            self._xy(cx - r * 0.86, cy + r * 0.3, cx + r * 0.86, cy + r * 0.3, cx, chin_y), fill=skin
        )
        self.draw.ellipse(self._xy(cx - r * 0.6, cy + r * 0.3, cx + r * 0.6, chin_y + r * 0.02), fill=skin)

    def _hair_front(self) -> None:
        """Bangs over the forehead, ending above the brows so that they never hide the expression."""
        who, r = self.who, self.who.face_radius
        cx, cy = who.centre_x, who.centre_y
        colour = (*who.hair, 255)
        bottom = self.brow_y - who.eye_height * 0.75
        self.draw.chord(
            self._xy(cx - r * 1.02, cy - r * 1.15, cx + r * 1.02, bottom + r * 0.35), 180, 360, fill=colour
        )
        teeth = 7 if who.hair_style == "spiky" else 5
        for k in range(teeth):
            x0 = cx - r * 0.95 + k * (1.9 * r / teeth)
            x1 = x0 + 1.9 * r / teeth
            tip_y = bottom + (r * 0.12 if who.hair_style == "spiky" else 0)
            self.draw.polygon(
                self._xy(x0, bottom - r * 0.25, x1, bottom - r * 0.25, (x0 + x1) / 2, tip_y), fill=colour
            )
        for side in (-1, 1):  # side locks frame the face outside the cheeks
            sx = cx + side * r * 0.98
            self.draw.polygon(
                self._xy(
                    sx, cy - r * 0.6, sx - side * r * 0.16, cy - r * 0.5, sx - side * r * 0.02, cy + r * 0.55
                ),
                fill=colour,
            )

    def _accessory(self) -> None:
        who, r = self.who, self.who.face_radius
        cx, cy = who.centre_x, who.centre_y
        colour = (*who.accessory_colour, 255)
        if who.accessory == "ribbon":
            bx, by = cx + r * 0.7, cy - r * 0.95
            self.draw.polygon(
                self._xy(bx, by, bx - r * 0.35, by - r * 0.2, bx - r * 0.35, by + r * 0.2), fill=colour
            )
            self.draw.polygon(
                self._xy(bx, by, bx + r * 0.35, by - r * 0.2, bx + r * 0.35, by + r * 0.2), fill=colour
            )
        elif who.accessory == "hairclip":
            x = cx - r * 0.55
            self.draw.line(
                self._xy(x - r * 0.18, cy - r * 0.78, x + r * 0.18, cy - r * 0.68),
                fill=colour,
                width=self._width(r * 0.07),
            )
        elif who.accessory == "hat":
            self.draw.chord(
                self._xy(cx - r * 1.15, cy - r * 1.75, cx + r * 1.15, cy - r * 0.55), 180, 360, fill=colour
            )
            self.draw.rectangle(
                self._xy(cx - r * 1.25, cy - r * 1.2, cx + r * 1.25, cy - r * 1.08), fill=colour
            )

    # The expression
    def _eye(self, expression: str, side: int) -> None:
        who = self.who
        x, y = self.eye_x(side), self.eye_y
        w, h = who.eye_width, who.eye_height
        ink = self._width(w * 0.16)
        if expression == "smile" and who.smile_closes_eyes:
            self.draw.arc(self._xy(x - w, y - h * 0.4, x + w, y + h * 0.9), 200, 340, fill=_INK, width=ink)
            return
        openness = {"angry": 0.55, "sad": 0.75, "smile": 0.9, "surprised": 1.15}[expression]
        top = y - h * openness
        bottom = y + h * (0.9 if expression == "surprised" else 0.8)
        self.draw.ellipse(self._xy(x - w, top, x + w, bottom), fill=(255, 255, 255))
        iris_r = w * (0.55 if expression == "surprised" else 0.72)
        iris_y = (top + bottom) / 2 + h * 0.1
        self.draw.ellipse(
            self._xy(x - iris_r, iris_y - iris_r * 1.2, x + iris_r, iris_y + iris_r * 1.2),
            fill=who.eye_colour,
        )
        pupil = iris_r * (0.25 if expression == "surprised" else 0.45)
        self.draw.ellipse(
            self._xy(x - pupil, iris_y - pupil * 1.2, x + pupil, iris_y + pupil * 1.2), fill=_INK
        )
        shine = iris_r * 0.3
        self.draw.ellipse(
            self._xy(
                x - iris_r * 0.5 - shine,
                iris_y - iris_r * 0.7 - shine,
                x - iris_r * 0.5 + shine,
                iris_y - iris_r * 0.7 + shine,
            ),
            fill=(255, 255, 255),
        )
        self.draw.arc(self._xy(x - w, top, x + w, bottom), 185, 355, fill=_INK, width=ink)  # the lash line
        # A lid slanting down to the centre when angry, drooping at the outside when sad: skin covers the eye
        # above it.
        inner_x, outer_x = x - side * w * 1.05, x + side * w * 1.05
        drop = bottom - top
        lid = {
            "angry": ((inner_x, top + drop * 0.45), (outer_x, top + drop * 0.05)),
            "sad": ((inner_x, top + drop * 0.05), (outer_x, top + drop * 0.4)),
        }.get(expression)
        if lid is not None:
            (ix, iy), (ox, oy) = lid
            above = top - h * 0.15
            self.draw.polygon(self._xy(ix, above, ox, above, ox, oy, ix, iy), fill=(*who.skin, 255))
            self._stroke([(ix, iy), (ox, oy)], w * 0.16)

    def _brow(self, expression: str, side: int) -> None:
        """Inner end toward the centre: down for angry, up for sad; both raised high for surprised."""
        who = self.who
        x, y = self.eye_x(side), self.brow_y
        w = who.eye_width * 1.1
        inner_x, outer_x = x - side * w, x + side * w
        inner_drop, outer_drop = BROW_DROP[expression]
        inner_y, outer_y = y + inner_drop * who.eye_height, y + outer_drop * who.eye_height
        middle_y = min(inner_y, outer_y) - who.eye_height * 0.1
        self._stroke([(inner_x, inner_y), (x, middle_y), (outer_x, outer_y)], who.eye_width * 0.2)

    def _cheeks(self, expression: str) -> None:
        who = self.who
        for side in (-1, 1):
            x = self.eye_x(side)
            if expression == "smile":
                y = self.eye_y + who.eye_height * 1.35
                self.draw.ellipse(
                    self._xy(
                        x - who.eye_width * 0.8,
                        y - who.eye_height * 0.25,
                        x + who.eye_width * 0.8,
                        y + who.eye_height * 0.25,
                    ),
                    fill=_BLUSH,
                )
            if expression == "sad":
                top = self.eye_y + who.eye_height * 0.7
                tx = x + side * who.eye_width * 0.45
                self.draw.line(
                    self._xy(tx, top, tx + side * who.eye_width * 0.1, self.mouth_y),
                    fill=_TEAR,
                    width=self._width(who.eye_width * 0.28),
                )
                self.draw.ellipse(
                    self._xy(
                        tx - who.eye_width * 0.25,
                        self.mouth_y - who.eye_width * 0.1,
                        tx + who.eye_width * 0.35,
                        self.mouth_y + who.eye_width * 0.45,
                    ),
                    fill=_TEAR,
                )

    def _mouth(self, expression: str) -> None:
        who = self.who
        x, y, r = who.centre_x, self.mouth_y, who.face_radius
        half = r * 0.22
        ink = self._width(r * 0.04)
        if expression == "angry" and who.angry_teeth:
            self.draw.rounded_rectangle(
                self._xy(x - half, y - r * 0.07, x + half, y + r * 0.09),
                radius=r * 0.03 * self.scale,
                fill=(255, 255, 255),
                outline=_INK,
                width=ink,
            )
            for k in (-1, 0, 1):
                self.draw.line(
                    self._xy(x + k * half / 2, y - r * 0.07, x + k * half / 2, y + r * 0.09),
                    fill=_INK,
                    width=max(1, ink // 2),
                )
            self.draw.line(
                self._xy(x - half, y + r * 0.01, x + half, y + r * 0.01), fill=_INK, width=max(1, ink // 2)
            )
        elif expression == "angry":
            self.draw.arc(self._xy(x - half, y, x + half, y + r * 0.22), 200, 340, fill=_INK, width=ink)
        elif expression == "sad":
            self.draw.arc(
                self._xy(x - half * 0.8, y + r * 0.02, x + half * 0.8, y + r * 0.2),
                195,
                345,
                fill=_INK,
                width=ink,
            )
        elif expression == "smile":
            self.draw.chord(
                self._xy(x - half, y - r * 0.12, x + half, y + r * 0.14),
                0,
                180,
                fill=_MOUTH,
                outline=_INK,
                width=ink,
            )
        else:
            self.draw.ellipse(
                self._xy(x - half * 0.45, y - r * 0.08, x + half * 0.45, y + r * 0.14),
                fill=_MOUTH,
                outline=_INK,
                width=ink,
            )

    # The region every expression draws in: the same for all four, so that it contains every difference
    def paint_region(self) -> None:
        who, r = self.who, self.who.face_radius
        for side in (-1, 1):
            x = self.eye_x(side)
            margin = who.eye_width * 0.25
            self.draw.rectangle(
                self._xy(x - who.eye_width * 1.1 - margin, self.brow_y - who.eye_height * 0.9,
                         x + who.eye_width * 1.1 + margin, self.eye_y + who.eye_height * 1.75), fill=255,
            )  # fmt: skip
            tx = x + side * who.eye_width * 0.45
            self.draw.rectangle(
                self._xy(tx - who.eye_width * 0.9, self.eye_y, tx + who.eye_width * 0.9,
                         self.mouth_y + who.eye_width * 0.6), fill=255,
            )  # fmt: skip
        x, y, half = who.centre_x, self.mouth_y, r * 0.22
        self.draw.rectangle(
            self._xy(x - half - r * 0.06, y - r * 0.16, x + half + r * 0.06, y + r * 0.27), fill=255
        )
