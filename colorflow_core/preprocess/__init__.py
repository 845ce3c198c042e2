"""Page preprocessing per input style: line extraction, screentone conversion, shading."""
from .lines import LineExtractor
from .screentone import ScreenStyleConverter
from .shading import shade_sketch
from .styles import STYLES, PreparedPage, prepare_page

__all__ = ["LineExtractor", "ScreenStyleConverter", "shade_sketch", "STYLES", "PreparedPage", "prepare_page"]
