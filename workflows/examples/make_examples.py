"""Draw the small example inputs shipped with the workflows (no third-party artwork anywhere).

Everything is drawn procedurally with PIL from a fixed seed, so running this script again gives the
same PNGs byte for byte:

- `manga/pages/page1..3.png`: gray manga pages (panels, one recurring character, screentone made
  by ordered dithering, speech balloons), 384 x 600 (the 512x800 aspect ratio).
- `manga/references/ref1..3.png`: the same character in colour, in three poses and settings.
- `storyboard/frames/shot1..3.png`: 16:9 line-only storyboard frames (640 x 360).
- `storyboard/references/ref1..2.png`: coloured 16:9 frames of the same scene.

`--thumbnails` instead writes the template browser's thumbnails, `workflows/<name>.jpg` beside each
`workflows/<name>.json` (ComfyUI shows that file as the template's picture): a gray input beside a
colour reference, from the PNGs above.

Usage: python workflows/examples/make_examples.py [output folder, default: this folder]
       python workflows/examples/make_examples.py --thumbnails
"""
from __future__ import annotations

import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# Colour palette of the character (what the references show and the colourizer should transfer).
SKIN = (250, 222, 196)
HAIR = (176, 58, 46)
SHIRT = (46, 104, 178)
EYES = (40, 120, 70)
SKY = (150, 200, 240)
GRASS = (110, 170, 90)
WALL = (235, 214, 170)
ROOF = (150, 70, 60)

# 4x4 Bayer matrix: ordered dithering turns flat grays into a regular screentone dot pattern.
_BAYER = [[0, 8, 2, 10], [12, 4, 14, 6], [3, 11, 1, 9], [15, 7, 13, 5]]


@dataclass(frozen=True)
class Palette:
    """Fill values for one rendering: RGB tuples for colour, gray levels for manga."""

    skin: object
    hair: object
    shirt: object
    eyes: object
    line: object
    paper: object


COLOR = Palette(SKIN, HAIR, SHIRT, EYES, (20, 20, 20), (255, 255, 255))
MANGA = Palette(255, 70, 165, 40, 0, 255)
SKETCH = Palette(255, 255, 255, 255, 0, 255)


def draw_character(draw: ImageDraw.ImageDraw, cx: float, cy: float, s: float, pal: Palette,
                   facing: int = 1) -> None:
    """The recurring character: head, spiky hair, eyes, shirt; (cx, cy) is the head centre, s its radius."""
    w = max(1, int(s * 0.08))
    # body (shirt) below the head
    draw.rounded_rectangle((cx - 1.1 * s, cy + 0.9 * s, cx + 1.1 * s, cy + 3.2 * s), radius=int(0.4 * s),
                           fill=pal.shirt, outline=pal.line, width=w)
    draw.ellipse((cx - s, cy - s, cx + s, cy + s), fill=pal.skin, outline=pal.line, width=w)
    # spiky hair: a polygon over the top half of the head
    spikes = [(cx - 1.15 * s, cy + 0.1 * s)]
    for k in range(7):
        x = cx - 1.1 * s + k * (2.2 * s / 6)
        spikes.append((x, cy - 1.5 * s if k % 2 == 0 else cy - 0.9 * s))
    spikes += [(cx + 1.15 * s, cy + 0.1 * s), (cx + 0.6 * s, cy - 0.45 * s), (cx - 0.6 * s, cy - 0.45 * s)]
    draw.polygon(spikes, fill=pal.hair, outline=pal.line, width=w)
    for ex in (-0.4, 0.4):
        x = cx + (ex + 0.15 * facing) * s
        draw.ellipse((x - 0.16 * s, cy - 0.05 * s, x + 0.16 * s, cy + 0.3 * s), fill=pal.eyes, outline=pal.line, width=w)
    draw.arc((cx - 0.3 * s + 0.15 * facing * s, cy + 0.35 * s, cx + 0.3 * s + 0.15 * facing * s, cy + 0.7 * s),
             20, 160, fill=pal.line, width=w)


def draw_house(draw: ImageDraw.ImageDraw, x: float, y: float, s: float, wall: object, roof: object,
               line: object) -> None:
    """A small house, bottom-left corner at (x, y), width s: the recurring background prop."""
    w = max(1, int(s * 0.03))
    draw.rectangle((x, y - 0.7 * s, x + s, y), fill=wall, outline=line, width=w)
    draw.polygon([(x - 0.1 * s, y - 0.7 * s), (x + 0.5 * s, y - 1.2 * s), (x + 1.1 * s, y - 0.7 * s)],
                 fill=roof, outline=line, width=w)
    draw.rectangle((x + 0.4 * s, y - 0.4 * s, x + 0.6 * s, y), fill=line if line == 0 else (90, 60, 40))


def screentone(img: Image.Image, cell: int = 2) -> Image.Image:
    """Ordered-dither the mid grays of an L image into black/white dots (manga screentone); pure
    black and white stay as they are."""
    src = img.load()
    out = img.copy()
    dst = out.load()
    for y in range(img.height):
        for x in range(img.width):
            v = src[x, y]
            if 8 < v < 247:
                threshold = (_BAYER[(y // cell) % 4][(x // cell) % 4] + 0.5) * 16
                dst[x, y] = 255 if v > threshold else 0
    return out


def balloon(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float], rng: random.Random) -> None:
    """A speech balloon with a few scribbled "text" strokes (no real lettering)."""
    draw.ellipse(box, fill=255, outline=0, width=2)
    x0, y0, x1, y1 = box
    for k in range(3):
        y = y0 + (y1 - y0) * (0.3 + 0.2 * k)
        length = (x1 - x0) * rng.uniform(0.35, 0.55)
        cx = (x0 + x1) / 2
        draw.line((cx - length / 2, y, cx + length / 2, y), fill=0, width=2)


def manga_page(index: int, rng: random.Random, size: tuple[int, int] = (384, 600)) -> Image.Image:
    """One gray page: three or four panels with the character and the house, then screentone."""
    width, height = size
    page = Image.new("L", size, 255)
    draw = ImageDraw.Draw(page)
    margin, gutter = 14, 10
    rows = [(margin, height * 0.38), (height * 0.38 + gutter, height * 0.7), (height * 0.7 + gutter, height - margin)]
    panels = []
    for r, (top, bottom) in enumerate(rows):
        if (r + index) % 2:
            split = width * rng.uniform(0.4, 0.6)
            panels += [(margin, top, split - gutter / 2, bottom), (split + gutter / 2, top, width - margin, bottom)]
        else:
            panels.append((margin, top, width - margin, bottom))
    for p, (x0, y0, x1, y1) in enumerate(panels):
        panel = Image.new("L", (int(x1 - x0), int(y1 - y0)), 255)
        pd = ImageDraw.Draw(panel)
        pw, ph = panel.size
        pd.line((0, ph * 0.75, pw, ph * 0.72), fill=0, width=2)  # horizon
        if (p + index) % 3 == 0:
            draw_house(pd, pw * 0.62, ph * 0.74, min(pw, ph) * 0.45, 215, 110, 0)
        s = min(pw, ph) * rng.uniform(0.13, 0.2)
        draw_character(pd, pw * rng.uniform(0.3, 0.5), ph * 0.3, s, MANGA, facing=rng.choice((-1, 1)))
        if p % 2 == index % 2:
            balloon(pd, (pw * 0.62, ph * 0.06, pw * 0.95, ph * 0.3), rng)
        page.paste(screentone(panel), (int(x0), int(y0)))
        draw.rectangle((x0, y0, x1, y1), outline=0, width=3)
    return page


def color_reference(index: int, rng: random.Random, size: tuple[int, int]) -> Image.Image:
    """A colour picture of the character (and sometimes the house) on sky and grass."""
    width, height = size
    img = Image.new("RGB", size, SKY)
    draw = ImageDraw.Draw(img)
    horizon = height * rng.uniform(0.6, 0.75)
    draw.rectangle((0, horizon, width, height), fill=GRASS)
    if index % 2 == 0:
        draw_house(draw, width * 0.55, horizon + 4, min(width, height) * 0.4, WALL, ROOF, (20, 20, 20))
    s = min(width, height) * rng.uniform(0.12, 0.18)
    head_y = max(1.7 * s, horizon - 3.2 * s)
    draw_character(draw, width * rng.uniform(0.25, 0.45), head_y, s, COLOR, facing=rng.choice((-1, 1)))
    return img


def storyboard_frame(index: int, rng: random.Random, size: tuple[int, int] = (640, 360), color: bool = False) -> Image.Image:
    """A 16:9 frame: line-only sketch (or the coloured version), character and house, camera arrow."""
    width, height = size
    img = Image.new("RGB" if color else "L", size, SKY if color else 255)
    draw = ImageDraw.Draw(img)
    line = (20, 20, 20) if color else 0
    horizon = height * (0.62 + 0.05 * (index % 3))
    if color:
        draw.rectangle((0, horizon, width, height), fill=GRASS)
    draw.line((0, horizon, width, horizon), fill=line, width=2)
    draw_house(draw, width * rng.uniform(0.55, 0.7), horizon + 2, height * 0.45,
               WALL if color else 255, ROOF if color else 255, line)
    s = height * rng.uniform(0.09, 0.14)
    draw_character(draw, width * rng.uniform(0.2, 0.4), horizon - 3.2 * s, s, COLOR if color else SKETCH,
                   facing=rng.choice((-1, 1)))
    if not color:
        y = height * 0.12
        draw.line((width * 0.08, y, width * 0.3, y), fill=0, width=3)  # camera-move arrow
        draw.polygon([(width * 0.3, y - 8), (width * 0.3 + 14, y), (width * 0.3, y + 8)], fill=0)
        draw.rectangle((2, 2, width - 3, height - 3), outline=0, width=3)
    return img


def main(out: Path) -> None:
    rng = random.Random(20241215)
    outputs = {}
    for i in range(1, 4):
        outputs[f"manga/pages/page{i}.png"] = manga_page(i, rng)
    for i, size in enumerate(((320, 320), (300, 420), (420, 300)), start=1):
        outputs[f"manga/references/ref{i}.png"] = color_reference(i, rng, size)
    for i in range(1, 4):
        outputs[f"storyboard/frames/shot{i}.png"] = storyboard_frame(i, rng)
    for i in range(1, 3):
        outputs[f"storyboard/references/ref{i}.png"] = storyboard_frame(i + 3, rng, color=True)
    for name, img in outputs.items():
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        img.save(path, optimize=True)
        print(f"wrote {path} ({img.width}x{img.height} {img.mode})")


# Each shipped workflow's thumbnail: (its gray input, a colour reference) under this folder.
THUMBNAIL_SOURCES = {
    "manga_sequence": ("manga/pages/page1.png", "manga/references/ref1.png"),
    "manga_sequence_native": ("manga/pages/page2.png", "manga/references/ref2.png"),
    "storyboard_sequence": ("storyboard/frames/shot1.png", "storyboard/references/ref1.png"),
}
THUMBNAIL_HEIGHT = 192


def thumbnail(gray: Image.Image, reference: Image.Image, height: int = THUMBNAIL_HEIGHT) -> Image.Image:
    """The gray input and a colour reference side by side, an arrow between them, on white."""
    tiles = [im.convert("RGB").resize((round(im.width * height / im.height), height), Image.LANCZOS)
             for im in (gray, reference)]
    gap = height // 4
    sheet = Image.new("RGB", (tiles[0].width + gap + tiles[1].width, height), (255, 255, 255))
    sheet.paste(tiles[0], (0, 0))
    sheet.paste(tiles[1], (tiles[0].width + gap, 0))
    x0, x1, y = tiles[0].width + gap // 6, tiles[0].width + gap - gap // 6, height // 2
    draw = ImageDraw.Draw(sheet)
    draw.line((x0, y, x1 - gap // 4, y), fill=(60, 60, 60), width=max(2, gap // 10))
    draw.polygon([(x1 - gap // 3, y - gap // 5), (x1, y), (x1 - gap // 3, y + gap // 5)], fill=(60, 60, 60))
    return sheet


def write_thumbnails(workflows: Path = HERE.parent) -> None:
    for name, (gray, reference) in THUMBNAIL_SOURCES.items():
        path = workflows / f"{name}.jpg"
        thumbnail(Image.open(HERE / gray), Image.open(HERE / reference)).save(path, quality=85, optimize=True)
        print(f"wrote {path}")


if __name__ == "__main__":
    if sys.argv[1:] == ["--thumbnails"]:
        write_thumbnails()
    else:
        main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
