"""Finding and loading the official release (`TencentARC/ColorFlow`) and the SD1.5 base.

The release is looked up in an explicit folder, then `$COLORFLOW_MODELS`, then the Hugging Face hub
cache; it is downloaded only on request (with per-component file patterns, so one style does not
pull all 12.8 GB). Missing files are reported together in one `WeightsError` that says what each
file is and where the release should go.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .errors import InputError, WeightsError
from .guider import WEIGHT_NAMES as GUIDER_WEIGHT_NAMES
from .guider import ColorGuiderSDModel
from .lora import SD_UNET_LORA_TARGETS, infer_lora_rank, inject_lora, merge_lora
from .preprocess.lines import LINE_EXTRACTOR_FILE
from .preprocess.screentone import G_RGB2INTSCR_FILE, SCREENVAE_DEC_FILE
from .weights import load_state_dict_file

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
    def graysd_multires(self) -> Path:
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

    def style_multires(self, style: str) -> Path:
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
                f"(it holds {RELEASE_FOLDERS}), or pass --models / set ${MODELS_ENV} to the folder that holds it."
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


def _hub_snapshot(repo: str, patterns: list[str] | None, *, download: bool, progress: bool) -> Path | None:
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
    for source, folder in (("--models", explicit), (f"${MODELS_ENV}", os.environ.get(MODELS_ENV) or None)):
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
    cached = _hub_snapshot(RELEASE_REPO, patterns, download=False, progress=progress)
    if cached is not None and (not allow_download or ReleasePaths(cached).complete(wanted)):
        return cached  # if incomplete, the caller's require() reports exactly what is missing
    if allow_download:
        return _hub_snapshot(RELEASE_REPO, patterns, download=True, progress=progress)
    raise WeightsError(
        f"the ColorFlow release was not found: pass --models <folder> or set ${MODELS_ENV} to a folder "
        f"holding the {RELEASE_REPO} release ({RELEASE_FOLDERS}), or allow the download "
        f"(https://huggingface.co/{RELEASE_REPO}, about 12.8 GB in all)."
    )


# ---- SD1.5 base -----------------------------------------------------------------------------------

SD_BASE_FILES: dict[str, tuple[tuple[str, ...], ...]] = {
    # component: groups of alternatives that must each be present
    "unet": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "vae": (("config.json",), ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")),
    "text_encoder": (("config.json",), ("model.safetensors", "pytorch_model.bin")),
    "tokenizer": (("vocab.json",), ("merges.txt",)),
    "scheduler": (("scheduler_config.json",),),
}
SD_CONFIG_PATTERNS = ["model_index.json", "*/*.json", "tokenizer/*"]
SD_WEIGHT_PATTERNS = SD_CONFIG_PATTERNS + [
    "unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
    "text_encoder/model.safetensors",
]


@dataclass
class SDBase:
    """The SD1.5 components ColorFlow uses (scheduler as its config: the pipeline builds UniPC from it)."""

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict = field(default_factory=dict)


@torch.no_grad()
def encode_clip_prompts(text_encoder: Any, tokenizer: Any, prompts: Sequence[str]) -> torch.Tensor:
    """CLIP last hidden states (len(prompts), 77, c), padded to the tokenizer's max length as SD does."""
    ids = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
        return_tensors="pt",
    ).input_ids
    return text_encoder(ids.to(text_encoder.device))[0]


def _missing_base_files(folder: Path) -> list[str]:
    missing = []
    for component, groups in SD_BASE_FILES.items():
        for group in groups:
            if not any((folder / component / name).is_file() for name in group):
                missing.append(f"{component}/" + " or ".join(group))
    return missing


def _load_part(what: Path, load: Any) -> Any:
    try:
        return load()
    except WeightsError:
        raise
    except Exception as exc:  # truncated / corrupt file, bad config, a checkpoint lacking weights
        raise WeightsError(
            f"{what} could not be loaded ({type(exc).__name__}: {exc}). A file in it is truncated or corrupt, or "
            f"it is not a complete SD1.5 model (weights missing): download it again or pick an SD1.5 base."
        ) from exc


def _load_sd_folder(folder: Path, dtype: torch.dtype, device: str | torch.device) -> SDBase:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    missing = _missing_base_files(folder)
    if missing:
        raise WeightsError(
            f"SD1.5 base folder {folder} is incomplete: missing {', '.join(missing)}. Use a diffusers-layout "
            f"SD1.5 folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/), e.g. {SD15_REPO}."
        )
    unet = _load_part(folder / "unet", lambda: UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=dtype))
    vae = _load_part(folder / "vae", lambda: AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=dtype))
    text_encoder = _load_part(folder / "text_encoder",
                              lambda: CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=dtype))
    tokenizer = _load_part(folder / "tokenizer", lambda: CLIPTokenizer.from_pretrained(folder / "tokenizer"))
    scheduler_config = _load_part(folder / "scheduler",
                                  lambda: json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
    return SDBase(unet.to(device).eval(), vae.to(device).eval(), text_encoder.to(device).eval(), tokenizer,
                  scheduler_config)


def _all_weights_loaded(pipe: Any) -> Any:
    """``pipe``, after checking that the file filled every weight: diffusers 0.32 leaves weights that
    a single file lacks on the meta device instead of raising as later releases do."""
    missing = [f"{part}.{name}" for part in ("unet", "vae", "text_encoder")
               for name, p in getattr(pipe, part).named_parameters() if p.is_meta]
    if missing:
        raise ValueError(f"{len(missing)} weights missing from the file, e.g. {', '.join(missing[:3])}")
    return pipe


def _load_sd_single_file(file: Path, config: Path | None, dtype: torch.dtype, device: str | torch.device) -> SDBase:
    """A single-file SD1.5 checkpoint; configs and tokenizer come from a diffusers SD1.5 folder."""
    from diffusers import StableDiffusionPipeline

    config = config or _hub_snapshot(SD15_REPO, SD_CONFIG_PATTERNS, download=False, progress=False)
    if config is None or not (Path(config) / "model_index.json").is_file():
        raise WeightsError(
            f"{file} is a single-file checkpoint; loading it needs the SD1.5 configs and tokenizer, which were not "
            f"found offline. Download the small config files of {SD15_REPO} once (model_index.json, */*.json, "
            f"tokenizer/) or pass a diffusers-layout SD1.5 folder as the base instead."
        )
    pipe = _load_part(file, lambda: _all_weights_loaded(StableDiffusionPipeline.from_single_file(
        str(file), config=str(config), local_files_only=True, torch_dtype=dtype,
        safety_checker=None, requires_safety_checker=False)))
    return SDBase(pipe.unet.to(device).eval(), pipe.vae.to(device).eval(), pipe.text_encoder.to(device).eval(),
                  pipe.tokenizer, dict(pipe.scheduler.config))


def load_sd_base(
    base: str | os.PathLike | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    config: str | os.PathLike | None = None,
    allow_download: bool = False,
    progress: bool = True,
) -> SDBase:
    """Load the SD1.5 base from a diffusers folder, a single `.safetensors` file, or (None) the hub."""
    if base is None:
        folder = _hub_snapshot(SD15_REPO, SD_WEIGHT_PATTERNS, download=False, progress=progress)
        if folder is None or _missing_base_files(folder):
            if not allow_download:
                raise WeightsError(
                    f"the SD1.5 base ({SD15_REPO}) is not in the hub cache: allow the download, or pass a "
                    f"diffusers-layout SD1.5 folder or a single SD1.5 .safetensors file as the base."
                )
            folder = _hub_snapshot(SD15_REPO, SD_WEIGHT_PATTERNS, download=True, progress=progress)
        return _load_sd_folder(folder, dtype, device)
    path = Path(base).expanduser()
    if path.is_dir():
        return _load_sd_folder(path, dtype, device)
    if path.is_file():
        if path.suffix != ".safetensors":
            raise WeightsError(f"{path}: a single-file SD1.5 base must be a .safetensors file")
        return _load_sd_single_file(path, Path(config) if config else None, dtype, device)
    raise WeightsError(f"SD1.5 base {path} does not exist")


def load_graysd(
    paths: ReleasePaths,
    unet: Any,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    *,
    merge: bool = False,
) -> ColorGuiderSDModel:
    """Load the SD ColorGuider and add the release LoRA to ``unet`` (every LoRA tensor must land).

    ``merge`` folds the LoRA into the UNet weights (faster; the adapter can no longer be removed).
    """
    paths.require(["graysd"])
    guider = ColorGuiderSDModel.from_release_folder(paths.graysd, dtype=dtype, device=device)
    state = load_state_dict_file(paths.graysd_lora)
    rank = infer_lora_rank(state, paths.graysd_lora)  # the official file is rank 64, alpha 64 (scale 1)
    inject_lora(unet, state, rank=rank, alpha=rank, target_modules=SD_UNET_LORA_TARGETS, source=paths.graysd_lora)
    if merge:
        merge_lora(unet)
    return guider
