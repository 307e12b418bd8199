"""An Omniglot-like data set drawn from the fonts matplotlib ships, with no download.

Omniglot (Lake et al. 2015) holds 1,623 handwritten characters of 50 alphabets,
each drawn once by 20 people; its "background" alphabets (964 characters) are
for meta-training and its "evaluation" alphabets (659) are held out. This
module makes a set of the same shape from the DejaVu (Sans, Serif, Mono) and
STIX fonts in ``matplotlib.get_data_path()/fonts/ttf``:

* an *alphabet* is a Unicode script or symbol block (Greek, Cyrillic, Armenian,
  Georgian, Hebrew, Arabic, N'Ko, Tifinagh, Canadian syllabics, math operators,
  arrows, box drawing, ...); blocks with more than ``MAX_PER_ALPHABET``
  characters are cut into consecutive parts (``Cyrillic_1``, ``Cyrillic_2``);
* a *character* is one code point. Precomposed letters (a letter plus
  diacritics), compatibility variants, marks, punctuation and spaces are left
  out, and so is every glyph whose normalised rendering is near-identical to an
  earlier one's, or to one of its 90-degree rotations (the MAML setting turns
  rotations into new classes, so ``<`` and ``^`` must not both be characters);
* a *drawer* is one of ``D`` simulated people: each draws every character with
  its own draw of the font (among the fonts that have the glyph), stroke width
  (dilation or erosion), affine distortion (rotation, shear, scale,
  translation) and an elastic distortion (a smooth random displacement field),
  at ``render_size`` pixels (three times ``size`` by default), box-filtered down
  to ``size``. The random numbers of one drawing come from a
  ``numpy.random.Generator`` seeded with (seed, the alphabet's block, code
  point, drawer), so the set is a pure function of the seed (and of the
  Pillow, FreeType and font versions, which the manifest records) and a
  subset of alphabets or characters holds exactly the images of the full set.

The images are written in Omniglot's layout,
``ROOT/images_background/<Alphabet>/characterNN/<id>_<drawer>.png`` and
``ROOT/images_evaluation/...``, as 8-bit grayscale PNGs with ink high (255) on
a black background (real Omniglot is black ink on white; ``load_omniglot``
reads both). The split is by alphabet, as in Omniglot; ``ROOT/manifest.json``
(written last, atomically) records the settings, the counts and the code point
of every character.

With the fonts of matplotlib 3.11 (DejaVu 2.35, STIX 1.0) and Pillow 13
(FreeType 2.14) the default settings give 54 alphabets with 2,071 characters:
31 background alphabets (1,232 characters) and 23 evaluation alphabets (839
characters), 41,420 images of 28 x 28 pixels, written in about 50 s on one
core (21 MB of files). Pixel-space 1-nearest-neighbour on the evaluation
alphabets scores 45% (5-way 1-shot), 67% (5-way 5-shot), 25% (20-way 1-shot)
and 47% (20-way 5-shot), near what pixels (cosine) score on Omniglot
(Vinyals et al. 2016: 42, 63, 27, 43%).
"""

from __future__ import annotations

import functools
import json
import os
import unicodedata
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from metadapt.errors import MetadaptError

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
)
"""The fonts a drawer picks from; the first that has a glyph is its reference (for de-duplication)."""


BLOCKS: tuple[tuple[str, tuple[tuple[int, int], ...]], ...] = (
    ("Latin", ((0x0041, 0x005A), (0x0061, 0x007A))),
    ("Latin_Extended_B", ((0x0180, 0x024F),)),
    ("IPA", ((0x0250, 0x02AF),)),
    ("Greek", ((0x0370, 0x03FF),)),
    ("Cyrillic", ((0x0400, 0x052F),)),
    ("Armenian", ((0x0531, 0x058F),)),
    ("Hebrew", ((0x05D0, 0x05F2),)),
    ("Arabic", ((0x0620, 0x06FF),)),
    ("NKo", ((0x07C0, 0x07FF),)),
    ("Lao", ((0x0E80, 0x0EFF),)),
    ("Georgian", ((0x10A0, 0x10FF),)),
    ("Canadian_Syllabics", ((0x1400, 0x167F),)),
    ("Ogham", ((0x1680, 0x169F),)),
    ("Phonetic_Extensions", ((0x1D00, 0x1DBF),)),
    ("Currency", ((0x20A0, 0x20CF),)),
    ("Letterlike", ((0x2100, 0x214F),)),
    ("Arrows", ((0x2190, 0x21FF),)),
    ("Math_Operators", ((0x2200, 0x22FF),)),
    ("Technical", ((0x2300, 0x23FF),)),
    ("Box_Drawing", ((0x2500, 0x257F),)),
    ("Math_Symbols_A", ((0x27C0, 0x27FF),)),
    ("Supplemental_Arrows", ((0x2900, 0x297F),)),
    ("Math_Symbols_B", ((0x2980, 0x29FF),)),
    ("Supplemental_Math_Operators", ((0x2A00, 0x2AFF),)),
    ("Symbols_and_Arrows", ((0x2B00, 0x2BFF),)),
    ("Latin_Extended_C", ((0x2C60, 0x2C7F),)),
    ("Georgian_Nuskhuri", ((0x2D00, 0x2D2F),)),
    ("Tifinagh", ((0x2D30, 0x2D7F),)),
    ("Cyrillic_Extended_B", ((0xA640, 0xA69F),)),
    ("Latin_Extended_D", ((0xA720, 0xA7FF),)),
    ("Old_Italic", ((0x10300, 0x1032F),)),
    ("Tai_Xuan_Jing", ((0x1D300, 0x1D35F),)),
)
"""The Unicode blocks (a script or symbol family, its code point ranges) alphabets are cut from, in order.

Pictographic blocks (miscellaneous symbols, dingbats, emoji, domino tiles),
Braille (whose dots mean nothing once a glyph is centred and scaled) and
filled geometric shapes are left out: Omniglot's characters are line drawings.
"""

EVALUATION_BLOCKS: frozenset[str] = frozenset({
    "Armenian", "Hebrew", "Lao", "NKo", "Georgian", "Georgian_Nuskhuri", "Tifinagh", "Ogham", "Old_Italic",
    "Currency", "Technical", "Box_Drawing", "Supplemental_Arrows", "Supplemental_Math_Operators", "Tai_Xuan_Jing",
    "Latin_Extended_D",
})
"""Blocks whose alphabets are held out (``images_evaluation``) by default; the others are background.

Every part of a block lands on the same side, so no script is split between
meta-training and test (Omniglot holds out whole alphabets too).
"""

MAX_PER_ALPHABET = 55
"""A block with more characters is cut into equal consecutive parts (Omniglot's largest alphabet has 55)."""

GENERATOR_VERSION = 1
"""Bumped whenever the images a seed gives change; part of the settings a finished folder is checked against."""

# A drawer's distortions, drawn uniformly in these ranges (lengths in pixels of an 84-pixel canvas, or fractions);
# tuned so that pixel-space 1-NN scores about what it scores on Omniglot. Changing them changes the images: bump
# GENERATOR_VERSION.
_ROTATION = 15.0          # degrees either way
_SHEAR = 0.25             # horizontal shear either way
_LOG_ZOOM = (-0.25, 0.1)  # log of the overall scale
_LOG_ASPECT = 0.1         # log of the width / height ratio either way
_SHIFT = 0.08             # translation either way, as a fraction of the canvas
_ELASTIC = 3.0            # standard deviation of the smooth displacement field, in pixels

_CATEGORIES = frozenset({"Lu", "Ll", "Lt", "Lo", "Nd", "Nl", "No", "Sm", "Sc", "So"})
_FILL = 0.7          # the glyph's longer side as a fraction of the canvas: leaves room for the distortions
_MAX_UPSCALE = 4.0   # glyphs under a quarter of their font size (dots, small marks) are not characters
_MEASURE_PX = 128    # the font size glyphs are measured at
_REF_SIZE = 32       # canvas of the reference renderings that de-duplication compares
_MAX_INK = 0.25      # more ink than this on the reference canvas is a filled shape, not a line drawing
_DUPLICATE = 0.1     # RMS distance (blurred 16 x 16) under which two glyphs count as one character
_SPLITS = ("background", "evaluation")


def _font_dir() -> Path:
    import matplotlib  # a dependency of metadapt; imported here so that importing this module stays cheap

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=1)
def _cmaps() -> dict[str, frozenset[int]]:
    """Font file -> the code points its character map covers (fontTools ships with matplotlib)."""
    from fontTools.ttLib import TTFont

    out: dict[str, frozenset[int]] = {}
    for name in FONT_FILES:
        path = _font_dir() / name
        if not path.is_file():
            raise MetadaptError(f"glyphs: font {name} not found in {path.parent} (is matplotlib installed whole?)")
        out[name] = frozenset(TTFont(str(path), lazy=True).getBestCmap())
    return out


@functools.lru_cache(maxsize=64)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    # BASIC layout: no shaping engine (raqm may or may not be installed), so every install draws the same glyphs.
    return ImageFont.truetype(str(_font_dir() / name), px, layout_engine=ImageFont.Layout.BASIC)


def _ink_box(name: str, cp: int, px: int) -> tuple[Image.Image, tuple[int, int, int, int] | None]:
    """The glyph at font size ``px`` on a canvas with room to spare, and its ink bounding box."""
    side = 4 * px + 8
    im = Image.new("L", (side, side))
    ImageDraw.Draw(im).text((side / 2, side / 2), chr(cp), font=_font(name, px), fill=255, anchor="mm")
    return im, im.getbbox()


def render_glyph(name: str, cp: int, canvas: int) -> np.ndarray | None:
    """Code point ``cp`` of font file ``name``, centred, its longer side ``_FILL * canvas``: ``canvas x canvas``
    floats in ``[0, 1]`` (ink 1), or ``None`` when the glyph is empty or too small to be a character."""
    # The extent is measured at one font size whatever the canvas, so that a glyph is a character or not alike
    # on the catalogue's small canvas and on the drawers' large one.
    _, box = _ink_box(name, cp, _MEASURE_PX)
    if box is None:
        return None
    extent = max(box[2] - box[0], box[3] - box[1])
    if extent * _MAX_UPSCALE < _MEASURE_PX:
        return None
    # Render again at the font size that gives the wanted extent: sharper than resizing a rendering.
    im, box = _ink_box(name, cp, max(1, round(_MEASURE_PX * _FILL * canvas / extent)))
    if box is None:
        return None
    glyph = im.crop(box)
    if max(glyph.size) > canvas:
        glyph.thumbnail((canvas, canvas), Image.Resampling.LANCZOS)
    out = Image.new("L", (canvas, canvas))
    out.paste(glyph, ((canvas - glyph.width) // 2, (canvas - glyph.height) // 2))
    return np.asarray(out, dtype=np.float32) / 255.0


def _features(images: np.ndarray) -> np.ndarray:
    """``N x 32 x 32`` reference renderings -> ``N x 256``: blurred, pooled to 16 x 16 (tolerant of weight and
    one-pixel shifts)."""
    p = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    b = (p[:, :-2, 1:-1] + p[:, 2:, 1:-1] + p[:, 1:-1, :-2] + p[:, 1:-1, 2:] + 2 * images) / 6
    n, h, w = images.shape
    return b.reshape(n, h // 2, 2, w // 2, 2).mean(axis=(2, 4)).reshape(n, -1)


def _rms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """RMS distance between the rows of ``a`` (``N x F``) and of ``b`` (``M x F``): ``N x M``."""
    d2 = a @ b.T  # in place from here on: the catalogue's matrices are large
    d2 *= -2.0
    d2 += (a * a).sum(1)[:, None]
    d2 += (b * b).sum(1)[None, :]
    np.maximum(d2, 0.0, out=d2)
    d2 /= a.shape[1]
    return np.sqrt(d2, out=d2)


def _is_candidate(cp: int) -> bool:
    ch = chr(cp)
    # Letters, digits and symbols only; a canonical or compatibility decomposition marks a precomposed letter
    # (a base letter plus diacritics) or a variant (circled, superscript, full-width, presentation forms).
    return unicodedata.category(ch) in _CATEGORIES and unicodedata.decomposition(ch) == ""


@functools.lru_cache(maxsize=1)
def glyph_alphabets() -> dict[str, tuple[str, tuple[int, ...]]]:
    """Every alphabet the fonts give: name -> (its block, its characters' code points), in catalogue order.

    A pure function of the font files: the same characters whatever subset is
    generated. De-duplication is global and greedy in catalogue order, so a
    glyph that repeats an earlier block's (Greek ``Α`` after Latin ``A``) goes,
    and an evaluation alphabet never repeats a background character.
    """
    cmaps = _cmaps()
    blocks: list[str] = []
    cps: list[int] = []
    refs: list[np.ndarray] = []
    for block, ranges in BLOCKS:
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                if not _is_candidate(cp):
                    continue
                ref_font = next((f for f in FONT_FILES if cp in cmaps[f]), None)
                if ref_font is None:
                    continue
                img = render_glyph(ref_font, cp, _REF_SIZE)
                if img is None or img.mean() > _MAX_INK:
                    continue
                blocks.append(block)
                cps.append(cp)
                refs.append(img)
    stack = np.stack(refs).astype(np.float64)  # float64: a borderline duplicate must not flip with the BLAS
    plain = _features(stack)
    # Distance to the nearest rotation by a multiple of 90 degrees: rotated copies would be duplicate classes.
    dist = _rms(plain, plain)
    for r in (1, 2, 3):
        np.minimum(dist, _rms(_features(np.ascontiguousarray(np.rot90(stack, r, axes=(1, 2)))), plain), out=dist)
    kept: list[int] = []
    for i in range(len(cps)):
        if not kept or dist[i, kept].min() > _DUPLICATE:
            kept.append(i)
    by_block: dict[str, list[int]] = {}
    for i in kept:
        by_block.setdefault(blocks[i], []).append(cps[i])
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for block, chars in by_block.items():
        parts = -(-len(chars) // MAX_PER_ALPHABET)
        if parts == 1:
            out[block] = (block, tuple(chars))
            continue
        bounds = np.linspace(0, len(chars), parts + 1).round().astype(int)
        for j in range(parts):
            out[f"{block}_{j + 1}"] = (block, tuple(chars[bounds[j]:bounds[j + 1]]))
    return out


def _dilate(img: np.ndarray, steps: int) -> np.ndarray:
    """Grey dilation (``steps > 0``) or erosion (``< 0``) by a 3 x 3 cross, ``|steps|`` times: a thicker or
    thinner pen."""
    for _ in range(abs(steps)):
        p = np.pad(img, 1)
        nbrs = (p[:-2, 1:-1], p[2:, 1:-1], p[1:-1, :-2], p[1:-1, 2:], img)
        img = np.maximum.reduce(nbrs) if steps > 0 else np.minimum.reduce(nbrs)
    return img


def _stroke_width(img: np.ndarray) -> float:
    """Mean stroke width of a rendering, in pixels: twice the ink area over the boundary length (a stroke of
    width ``w`` and length ``L`` has area ``w L`` and about ``2 L`` boundary pixels)."""
    ink = img > 0.5
    p = np.pad(ink, 1)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    boundary = int((ink & ~inner).sum())
    return 2.0 * float(ink.sum()) / max(boundary, 1)


def _bilinear(img: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """``img`` (``H x W``) sampled at float pixel coordinates ``ys, xs`` (any shape), zero outside."""
    h, w = img.shape
    p = np.pad(img, 1).ravel()  # a zero border: samples that straddle the edge fade out
    ys = np.clip(ys, -1.0, h) + 1.0
    xs = np.clip(xs, -1.0, w) + 1.0
    fy, fx = np.floor(ys), np.floor(xs)
    wy, wx = ys - fy, xs - fx
    y0 = np.minimum(fy.astype(np.int64), h)
    x0 = np.minimum(fx.astype(np.int64), w)
    i = y0 * (w + 2) + x0
    top = p[i] + wx * (p[i + 1] - p[i])
    bottom = p[i + w + 2] + wx * (p[i + w + 3] - p[i + w + 2])
    return top + wy * (bottom - top)


@functools.lru_cache(maxsize=8)
def _grid(r: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:r, 0:r].astype(np.float32)
    return yy, xx


def _smooth_field(rng: np.random.Generator, canvas: int, grid: int, sigma: float) -> np.ndarray:
    """A smooth random displacement (``canvas x canvas``, pixels): Gaussian values on a ``grid x grid`` lattice,
    interpolated bicubically."""
    coarse = rng.normal(0.0, sigma, size=(grid, grid)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse).resize((canvas, canvas), Image.Resampling.BICUBIC))


def draw_character(glyphs: Sequence[np.ndarray], rng: np.random.Generator, size: int) -> np.ndarray:
    """One drawer's drawing of a character: ``size x size`` uint8, ink high.

    ``glyphs`` are the character's renderings in every font that has it
    (``render_glyph``, ``R x R``); the drawer picks one, thickens or thins its
    strokes, warps it by an affine map and a smooth displacement field (one
    bilinear resampling for both) and box-filters it down to ``size``.
    """
    base = glyphs[int(rng.integers(len(glyphs)))]
    r = base.shape[0]
    unit = r / 84.0  # the distortions were tuned on an 84-pixel canvas (28 x 3)
    # A pen of the drawer's own width (2 to 3 pixels at 28 x 28, as Omniglot's), whatever the font's weight:
    # each dilation by the cross adds about two pixels to a stroke, each erosion takes two away.
    pen = rng.uniform(5.0, 9.0) * unit
    steps = int(np.clip(np.rint((pen - _stroke_width(base)) / 2.0), -3, 3))
    img = _dilate(base, steps)
    if steps < 0 and img.sum() < 0.5 * base.sum():
        img = _dilate(base, -1)  # thin strokes would vanish: the least thinning only
        if img.sum() < 0.5 * base.sum():
            img = base
    angle = np.deg2rad(rng.uniform(-_ROTATION, _ROTATION))
    shear = rng.uniform(-_SHEAR, _SHEAR)
    zoom = np.exp(rng.uniform(*_LOG_ZOOM))
    aspect = np.exp(rng.uniform(-_LOG_ASPECT, _LOG_ASPECT))
    shift = rng.uniform(-_SHIFT, _SHIFT, size=2) * r
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    forward = rot @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([zoom * aspect, zoom / aspect])
    inverse = np.linalg.inv(forward)
    grid = int(rng.integers(3, 6))
    dx = _smooth_field(rng, r, grid, _ELASTIC * unit)
    dy = _smooth_field(rng, r, grid, _ELASTIC * unit)
    c = (r - 1) / 2
    yy, xx = _grid(r)
    # Pull-back: the output pixel p shows the input at forward^-1 (p - c - shift) + c, displaced by the field.
    oy, ox = yy - (c + shift[0]), xx - (c + shift[1])
    src_x = (inverse[0, 0] * ox + inverse[0, 1] * oy + c + dx).astype(np.float32)
    src_y = (inverse[1, 0] * ox + inverse[1, 1] * oy + c + dy).astype(np.float32)
    warped = _bilinear(img, src_y, src_x).astype(np.float32, copy=False)  # float32: a mode F image
    small = np.asarray(Image.fromarray(warped).resize((size, size), Image.Resampling.BOX))
    return np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)


def _character_renderings(cp: int, canvas: int) -> list[np.ndarray]:
    """The renderings of ``cp`` in every font that has it (a font whose glyph comes out empty is skipped)."""
    cmaps = _cmaps()
    out = [g for f in FONT_FILES if cp in cmaps[f] for g in (render_glyph(f, cp, canvas),) if g is not None]
    if not out:  # the catalogue rendered it in its reference font: cannot happen with the same fonts
        raise MetadaptError(f"glyphs: U+{cp:04X} renders empty in every font")
    return out


def _settings(seed: int, drawers: int, size: int, render_size: int, alphabets: list[str], background: list[str],
              max_characters: int | None) -> dict[str, object]:
    return {"generator": GENERATOR_VERSION, "seed": seed, "drawers": drawers, "size": size,
            "render_size": render_size, "alphabets": alphabets, "background_alphabets": background,
            "max_characters": max_characters}


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < low:
        raise MetadaptError(f"glyphs: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def generate_glyphs(
    root: str | os.PathLike[str],
    *,
    seed: int = 0,
    drawers: int = 20,
    size: int = 28,
    background_alphabets: Sequence[str] | None = None,
    alphabets: Sequence[str] | None = None,
    max_characters: int | None = None,
    render_size: int | None = None,
) -> Path:
    """Write the glyph data set under ``root`` in Omniglot's layout and return ``root``.

    Args:
        root: the folder; created if missing. A folder whose ``manifest.json``
            holds the same settings is complete and returned at once; one made
            with other settings is an error (pick another folder or delete it).
            A folder without a manifest (an interrupted run) is written over.
        seed: the seed every drawing's random numbers derive from (>= 0).
        drawers: ``D``, drawings of every character (Omniglot: 20).
        size: side of the images in pixels (Omniglot at MAML's scale: 28).
        background_alphabets: the alphabets written to ``images_background``
            (meta-training); the other generated ones go to
            ``images_evaluation``. ``None``: every alphabet not cut from a
            block in ``EVALUATION_BLOCKS``.
        alphabets: the alphabets to generate (names of ``glyph_alphabets()``);
            ``None``: all.
        max_characters: at most this many characters of each alphabet (its
            first ones); ``None``: all. With ``alphabets`` it makes small sets
            for tests, whose images are those of the full set.
        render_size: the canvas the drawers draw on before it is box-filtered
            to ``size``; ``None``: ``3 * size``.

    Raises:
        MetadaptError: a bad setting, an unknown alphabet name, a folder made
            with other settings or one that cannot be written.
    """
    seed = _check_int("seed", seed, 0)
    drawers = _check_int("drawers", drawers, 1)
    size = _check_int("size", size, 4)
    render_size = 3 * size if render_size is None else _check_int("render_size", render_size, size)
    if max_characters is not None:
        max_characters = _check_int("max_characters", max_characters, 1)
    catalogue = glyph_alphabets()
    wanted = list(catalogue) if alphabets is None else [alphabets] if isinstance(alphabets, str) else list(alphabets)
    unknown = [n for n in wanted if n not in catalogue]
    if unknown:
        raise MetadaptError(f"glyphs: unknown alphabet(s) {', '.join(map(repr, unknown))} "
                            f"(see metadapt.data.glyphs.glyph_alphabets())")
    if not wanted:
        raise MetadaptError("glyphs: no alphabet to generate")
    names = [n for n in catalogue if n in set(wanted)]  # catalogue order: the settings do not depend on the order
    if background_alphabets is None:
        background = [n for n in names if catalogue[n][0] not in EVALUATION_BLOCKS]
    else:
        chosen = [background_alphabets] if isinstance(background_alphabets, str) else list(background_alphabets)
        stray = [n for n in chosen if n not in names]
        if stray:
            raise MetadaptError(f"glyphs: background alphabet(s) {', '.join(map(repr, stray))} are not among "
                                f"the alphabets to generate")
        background = [n for n in names if n in set(chosen)]
    settings = _settings(seed, drawers, size, render_size, names, background, max_characters)

    root = Path(root)
    manifest_path = root / "manifest.json"
    if manifest_path.exists():
        try:
            previous = json.loads(manifest_path.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise MetadaptError(f"glyphs: {manifest_path} is unreadable ({exc}); delete the folder") from exc
        if previous == settings:
            return root
        differ = sorted(k for k in settings if previous.get(k) != settings[k])
        raise MetadaptError(f"glyphs: {root} holds a set made with other settings ({', '.join(differ)}); "
                            f"pick another folder or delete it")

    ids = {cp: i + 1 for i, cp in enumerate(cp for _, cps in catalogue.values() for cp in cps)}
    record: dict[str, dict[str, object]] = {}
    counts = {s: {"alphabets": 0, "characters": 0, "images": 0} for s in _SPLITS}
    try:
        for name in names:
            block, cps = catalogue[name]
            split = "background" if name in set(background) else "evaluation"
            chars = cps[:max_characters] if max_characters else cps
            block_key = zlib.crc32(block.encode())
            for j, cp in enumerate(chars):
                folder = root / f"images_{split}" / name / f"character{j + 1:02d}"
                folder.mkdir(parents=True, exist_ok=True)
                glyphs = _character_renderings(cp, render_size)
                for d in range(drawers):
                    rng = np.random.default_rng([seed, block_key, cp, d])
                    img = draw_character(glyphs, rng, size)
                    Image.fromarray(img).save(folder / f"{ids[cp]:04d}_{d + 1:02d}.png", format="PNG")
            record[name] = {"split": split, "block": block, "characters": [f"U+{cp:04X}" for cp in chars]}
            counts[split]["alphabets"] += 1
            counts[split]["characters"] += len(chars)
            counts[split]["images"] += len(chars) * drawers
        manifest = {"format": "metadapt-glyphs", "settings": settings, "counts": counts, "alphabets": record,
                    "versions": _versions()}
        tmp = manifest_path.with_name(f".manifest.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(manifest, indent=1))
        os.replace(tmp, manifest_path)  # last and atomic: a manifest means a complete folder
    except OSError as exc:
        raise MetadaptError(f"glyphs: cannot write under {root}: {exc}") from exc
    return root


def _versions() -> dict[str, str]:
    import matplotlib
    import PIL

    return {"pillow": PIL.__version__, "freetype": str(ImageFont.core.freetype2_version),
            "matplotlib": matplotlib.__version__, "numpy": np.__version__, "unicode": unicodedata.unidata_version}
