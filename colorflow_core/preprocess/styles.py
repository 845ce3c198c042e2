"""Page -> (diffusion condition, GSRP guide) for each input style (screenstyle, sketch, shading)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from ..errors import InputError, WeightsError
from ..images import normalize_mode, process_image
from ..sizes import PageSize
from .lines import LINE_EXTRACTOR_FILE, LineExtractor
from .screentone import ScreenStyleConverter
from .shading import shade_sketch

# screenstyle = the original's "GrayImage(ScreenStyle)", sketch = "Sketch", shading = "Sketch_Shading"
STYLES = ("screenstyle", "sketch", "shading")


@dataclass(frozen=True)
class PreparedPage:
    """Both images are gray RGB; the guide has the guide size (1.5W x 1.5H), the condition too except
    for the identity preprocessing (the page as given)."""

    condition: Image.Image  # fitted to W x H later by retrieval, then the diffusion condition
    guide: Image.Image  # the GSRP guide


def prepare_page(
    page: Image.Image,
    style: str,
    size: PageSize,
    *,
    screentone: ScreenStyleConverter | None,
    lines: LineExtractor | None,
    seed: int = 0,
    generator_device: str | torch.device = "cpu",
) -> PreparedPage:
    """Preprocess one page for ``style``; the page is first fitted to 1.5W x 1.5H (Q15).

    - screenstyle: the 50/50 blend of the ScreenStyle screentone and the page gray (noise seeded
      with ``seed`` + 3). With ``screentone=None`` the preprocessing is the identity, which suits
      pages that already are screentoned manga: the condition is the gray page itself, NOT first
      fitted to 1.5W x 1.5H, because retrieval fits it to W x H in one resize as the parity fixtures
      do (a 1.5x detour changes the query by up to ~30 levels, and with it the retrieved patches);
      the guide is the gray Q15. Callers must offer this only when the user explicitly turns the
      conversion off, never as a fallback for missing ScreenStyle weights.
    - sketch: the line image of the page gray (a colour page is converted to gray first, as in the
      original); condition = guide.
    - shading: condition = the shaded sketch (flat gray and black areas on the lines), guide = the
      pure line image.
    ``lines`` is required for sketch and shading.
    """
    if style not in STYLES:
        raise InputError(f"unknown style {style!r}; expected one of {', '.join(STYLES)}")
    if not isinstance(page, Image.Image):
        raise InputError(f"page must be a PIL image, got {type(page).__name__}")
    q15 = process_image(page, *size.guide)
    if style == "screenstyle":
        if screentone is None:
            return PreparedPage(condition=normalize_mode(page).convert("L").convert("RGB"),
                                guide=q15.convert("L").convert("RGB"))
        condition = screentone.screenstyle_condition(q15, seed, generator_device)
        return PreparedPage(condition=condition, guide=condition)
    if lines is None:
        raise WeightsError(f"the {style} style needs the line extractor ({LINE_EXTRACTOR_FILE} of the release)")
    gray = q15.convert("L")
    line_image = lines.extract_lines(gray).convert("RGB")
    if style == "sketch":
        return PreparedPage(condition=line_image, guide=line_image)
    return PreparedPage(condition=shade_sketch(line_image, gray), guide=line_image)
