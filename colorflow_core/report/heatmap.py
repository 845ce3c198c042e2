"""The pages x references usage heatmap, drawn with PIL (no plotting dependency).

Row i is page i, column j reference j (the report's reference numbers); a cell's colour is how many
of the page's canvas cells came from that reference (white: none, darkest: the chapter's maximum);
a page without a retrieval record is a gray row.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

LABEL_CHARS = 18           # page / reference names are cut to this many characters
MARGIN = 112               # px for the labels left of the rows and above the columns
MIN_LABEL_CELL = 10        # labels are drawn when a row / column is at least this many px
TARGET_SIDE = 1200         # the grid's width / height aims at about this many px
EMPTY = (255, 255, 255)
NO_RECORD = (215, 215, 215)
LIGHT, DARK = (222, 235, 247), (8, 48, 107)


@dataclass(frozen=True)
class HeatmapLayout:
    pages: int
    references: int
    cell_w: int
    cell_h: int
    left: int
    top: int

    @property
    def size(self) -> tuple[int, int]:
        return (self.left + self.references * self.cell_w + 1, self.top + self.pages * self.cell_h + 1)

    def cell_box(self, page: int, reference: int) -> tuple[int, int, int, int]:
        """The filled box of (page, reference), inclusive corners (a 1-px white grid around it)."""
        x0 = self.left + reference * self.cell_w + 1
        y0 = self.top + page * self.cell_h + 1
        return (x0, y0, x0 + self.cell_w - 2, y0 + self.cell_h - 2)


def heatmap_layout(pages: int, references: int) -> HeatmapLayout:
    """Cell sizes that keep the grid near `TARGET_SIDE` px (4 to 24 px a cell)."""
    cell_w = max(4, min(24, TARGET_SIDE // max(1, references)))
    cell_h = max(4, min(24, TARGET_SIDE // max(1, pages)))
    left = MARGIN if cell_h >= MIN_LABEL_CELL else 0
    top = MARGIN if cell_w >= MIN_LABEL_CELL else 0
    return HeatmapLayout(max(1, pages), max(1, references), cell_w, cell_h, left, top)


def colour(count: int, maximum: int) -> tuple[int, int, int]:
    if count <= 0 or maximum <= 0:
        return EMPTY
    t = count / maximum
    return tuple(round(a + (b - a) * t) for a, b in zip(LIGHT, DARK))  # type: ignore[return-value]


def _short(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[: LABEL_CHARS - 1] + "…"


def draw_heatmap(matrix: Sequence[Sequence[int] | None], page_names: Sequence[str],
                 reference_names: Sequence[str]) -> Image.Image:
    """``matrix[i][j]``: canvas cells page i took from reference j; None: page i has no record."""
    layout = heatmap_layout(len(matrix), len(reference_names))
    image = Image.new("RGB", layout.size, EMPTY)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    maximum = max((v for row in matrix if row is not None for v in row), default=0)
    grid = (235, 235, 235)
    draw.rectangle((layout.left, layout.top, layout.size[0] - 1, layout.size[1] - 1), outline=grid)
    for i, row in enumerate(matrix):
        for j in range(layout.references if reference_names else 0):
            value = NO_RECORD if row is None else colour(row[j], maximum)
            draw.rectangle(layout.cell_box(i, j), fill=value)
            if row is not None and row[j] and layout.cell_w >= 16 and layout.cell_h >= 12:
                x0, y0, x1, y1 = layout.cell_box(i, j)
                text = str(row[j])
                ink = (255, 255, 255) if row[j] * 2 > maximum else (0, 0, 0)
                draw.text(((x0 + x1) / 2, (y0 + y1) / 2), text, fill=ink, font=font, anchor="mm")
    if layout.left:
        for i, name in enumerate(page_names):
            y = layout.top + i * layout.cell_h + layout.cell_h / 2
            draw.text((layout.left - 4, y), _short(name), fill=(0, 0, 0), font=font, anchor="rm")
    if layout.top:
        for j, name in enumerate(reference_names):
            label = f"{j + 1} {_short(name)}"
            box = draw.textbbox((0, 0), label, font=font)
            strip = Image.new("RGB", (box[2] + 2, box[3] + 2), EMPTY)
            ImageDraw.Draw(strip).text((1, 0), label, fill=(0, 0, 0), font=font)
            strip = strip.rotate(90, expand=True)
            if strip.height > layout.top - 4:
                strip = strip.crop((0, strip.height - (layout.top - 4), strip.width, strip.height))
            x = layout.left + j * layout.cell_w + (layout.cell_w - strip.width) // 2
            image.paste(strip, (max(layout.left, x), layout.top - 2 - strip.height))
    return image
