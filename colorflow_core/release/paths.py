"""Finding the official release (`TencentARC/ColorFlow`): its files per component, and where they are.

The release is looked up in an explicit folder, then `$COLORFLOW_MODELS`, then the Hugging Face hub
cache; it is downloaded only on request (with per-component file patterns, so one style does not
pull all 12.8 GB). Missing files are reported together in one `WeightsError` that says what each
file is and where the release should go.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..colorize.sd.guider import WEIGHT_NAMES as GUIDER_WEIGHT_NAMES
from ..errors import InputError, WeightsError
from ..preprocess.lines import LINE_EXTRACTOR_FILE
from ..preprocess.screentone import G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE

RELEASE_REPO = "TencentARC/ColorFlow"
SD15_REPO = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MODELS_ENV = "COLORFLOW_MODELS"
RELEASE_FOLDERS = "GraySD/, image_encoder/, LE/, ScreenStyle/, sketch/, shading/"
PIXART_STYLES = ("sketch", "shading")
FUSION_FILE = "MultiResNetModel.bin"


@dataclass(frozen=True)
class ReleaseFile:
    """One needed file: alternative paths under the release root (first existing wins) and what it is."""

    candidates: tuple[str, ...]
    what: str


def _guider_files(folder: str, what: str) -> tuple[ReleaseFile, ...]:
    return (
        ReleaseFile((f"{folder}/config.json",), f"{what} config"),
        ReleaseFile(tuple(f"{folder}/{n}" for n in GUIDER_WEIGHT_NAMES), f"{what} weights"),
    )


COMPONENTS: dict[str, tuple[ReleaseFile, ...]] = {
    "graysd": _guider_files("GraySD", "SD1.5 ColorGuider")
    + (ReleaseFile(("GraySD/unet_lora.bin",), "LoRA for the SD1.5 UNet"),),
    "graysd_fusion": (ReleaseFile((f"GraySD/{FUSION_FILE}",), "GSRP fusion network"),),
    "image_encoder": (
        ReleaseFile(("image_encoder/config.json",), "CLIP image encoder config"),
        ReleaseFile(("image_encoder/model.safetensors", "image_encoder/pytorch_model.bin"), "CLIP image encoder weights"),
    ),
    "line_extractor": (ReleaseFile((LINE_EXTRACTOR_FILE,), "line extractor (Sketch styles)"),),
    "screenstyle": (
        ReleaseFile((G_RGB2INTSCR_FILE,), "ScreenStyle generator (GrayImage style)"),
        ReleaseFile((SCREENVAE_DEC_FILE,), "ScreenVAE decoder (GrayImage style)"),
    ),
}
for _style in PIXART_STYLES:
    COMPONENTS[_style] = _guider_files(_style, f"PixArt ColorGuider ({_style})") + (
        ReleaseFile((f"{_style}/transformer_lora.bin",), f"LoRA for the PixArt transformer ({_style})"),
    )
    # The hub deleted the style folders' own fusion nets ("fix bug"): theirs first, then GraySD's.
    COMPONENTS[f"{_style}_fusion"] = (
        ReleaseFile((f"{_style}/{FUSION_FILE}", f"GraySD/{FUSION_FILE}"), f"GSRP fusion network ({_style})"),
    )


def _check_components(names: Iterable[str]) -> list[str]:
    names = list(names)
    unknown = [n for n in names if n not in COMPONENTS]
    if unknown:
        raise InputError(f"unknown release component(s) {unknown}; known: {', '.join(COMPONENTS)}")
    return names


def download_patterns(components: Iterable[str]) -> list[str]:
    """hub `allow_patterns` fetching exactly the files of ``components``."""
    names = _check_components(components)
    return sorted({c for name in names for f in COMPONENTS[name] for c in f.candidates})


@dataclass(frozen=True)
class ReleasePaths:
    """Resolved paths of the release files under ``root`` (whether or not they exist yet)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def resolve(self, item: ReleaseFile) -> Path:
        """The first existing candidate, else the preferred (last-listed is the official) location."""
        paths = [self.root / c for c in item.candidates]
        return next((p for p in paths if p.is_file()), paths[-1])

    def _component(self, name: str) -> list[Path]:
        return [self.resolve(f) for f in COMPONENTS[name]]

    @property
    def graysd(self) -> Path:
        return self.root / "GraySD"

    @property
    def graysd_guider(self) -> Path:
        """`.safetensors` when present (a converted copy), else the released `.bin`."""
        return self._component("graysd")[1]

    @property
    def graysd_lora(self) -> Path:
        return self._component("graysd")[2]

    @property
    def graysd_fusion(self) -> Path:
        return self._component("graysd_fusion")[0]

    @property
    def image_encoder(self) -> Path:
        return self.root / "image_encoder"

    @property
    def line_extractor(self) -> Path:
        return self._component("line_extractor")[0]

    @property
    def screenstyle_generator(self) -> Path:
        return self._component("screenstyle")[0]

    @property
    def screenvae_decoder(self) -> Path:
        return self._component("screenstyle")[1]

    def style_dir(self, style: str) -> Path:
        return self.root / self._style(style)

    def style_lora(self, style: str) -> Path:
        return self._component(self._style(style))[2]

    def style_fusion(self, style: str) -> Path:
        return self._component(f"{self._style(style)}_fusion")[0]

    @staticmethod
    def _style(style: str) -> str:
        if style not in PIXART_STYLES:
            raise InputError(f"unknown PixArt style folder {style!r}; expected one of {PIXART_STYLES}")
        return style

    def missing(self, components: Iterable[str]) -> list[ReleaseFile]:
        """The files of ``components`` that are not there."""
        return [f for name in _check_components(components) for f in COMPONENTS[name] if not self.resolve(f).is_file()]

    def complete(self, components: Iterable[str]) -> bool:
        return not self.missing(components)

    def require(self, components: Iterable[str]) -> None:
        """Raise one `WeightsError` naming every missing file of ``components`` and where it goes."""
        missing = [f"  - {' or '.join(item.candidates)} ({item.what})" for item in self.missing(components)]
        if missing:
            raise WeightsError(
                f"ColorFlow release files missing under {self.root}:\n" + "\n".join(missing) + "\n"
                f"Put the {RELEASE_REPO} release (https://huggingface.co/{RELEASE_REPO}) in {self.root} "
                f"(it holds {RELEASE_FOLDERS}), or pass --release / set ${MODELS_ENV} to the folder that holds it."
            )


@contextlib.contextmanager
def _hub_progress_bars_off():
    """huggingface_hub's progress bars off for the block, then as before (its `disable_progress_bars()`
    is a context manager only in newer releases; the plain calls work in every one)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


def hub_snapshot(repo: str, patterns: list[str] | None, *, download: bool, progress: bool) -> Path | None:
    """The hub snapshot folder of ``repo`` from the cache (or downloaded); None when not cached."""
    from huggingface_hub import snapshot_download

    quiet = contextlib.nullcontext() if progress else _hub_progress_bars_off()
    try:
        with quiet:
            return Path(snapshot_download(repo, allow_patterns=patterns, local_files_only=not download))
    except Exception as exc:  # LocalEntryNotFoundError, offline, HTTP errors
        if download:
            raise WeightsError(
                f"could not download {repo} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
                f"Check the connection, or download it by hand and pass its folder."
            ) from exc
        return None


def find_release(
    explicit: str | os.PathLike | None = None,
    allow_download: bool = False,
    progress: bool = True,
    components: Iterable[str] | None = None,
) -> Path:
    """The release root: ``explicit`` → `$COLORFLOW_MODELS` → hub cache → hub download (if allowed).

    ``components`` limits what a download fetches (and what a cached snapshot must hold before the
    download is skipped); None means the whole release.
    """
    for source, folder in (("--release", explicit), (f"${MODELS_ENV}", os.environ.get(MODELS_ENV) or None)):
        if folder is not None:
            path = Path(folder).expanduser()
            if path.exists() and not path.is_dir():
                raise WeightsError(f"release folder {path} (from {source}) is not a folder: give the folder that "
                                   f"holds the release ({RELEASE_FOLDERS})")
            if not path.is_dir():
                raise WeightsError(f"release folder {path} (from {source}) does not exist")
            return path
    wanted = _check_components(components if components is not None else COMPONENTS)
    patterns = download_patterns(wanted) if components is not None else None
    cached = hub_snapshot(RELEASE_REPO, patterns, download=False, progress=progress)
    if cached is not None and (not allow_download or ReleasePaths(cached).complete(wanted)):
        return cached  # if incomplete, the caller's require() reports exactly what is missing
    if allow_download:
        return hub_snapshot(RELEASE_REPO, patterns, download=True, progress=progress)
    raise WeightsError(
        f"the ColorFlow release was not found: pass --release <folder> or set ${MODELS_ENV} to a folder "
        f"holding the {RELEASE_REPO} release ({RELEASE_FOLDERS}), or allow the download "
        f"(https://huggingface.co/{RELEASE_REPO}, about 12.8 GB in all)."
    )
