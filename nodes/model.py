"""Load ColorFlow Model: a style of the release + an SD1.5 base, wrapped for ComfyUI's memory manager."""
from __future__ import annotations

import weakref
from pathlib import Path

from colorflow_core.errors import WeightsError
from colorflow_core.options import DEFAULT_ENCODER, ENCODER_HELP

from . import comfy
from .types import MODEL_TYPE

# colorflow_core.release and .engine import diffusers / transformers / peft: they are imported
# inside the functions so that ComfyUI's start-up does not pay for them.
HUB_BASE = "hub default"
NO_RELEASE = "(no release found in models/colorflow)"
DTYPES = ("auto", "fp16", "bf16", "fp32")
# The engine this node loaded last per (release folder, device, dtype), held weakly so ComfyUI can still
# free a model it drops from its cache. Loading another style of the same release shares its image
# encoder, GSRP fusion net and preprocessing nets instead of loading them again.
_LAST_LOADED: dict[tuple[str, str, str], weakref.ReferenceType] = {}
# Sub-folders whose presence marks a folder as a ColorFlow release (any one style is enough).
_RELEASE_MARKERS = ("GraySD", "sketch", "shading", "image_encoder")


def _is_release(folder: Path) -> bool:
    return any((folder / marker).is_dir() for marker in _RELEASE_MARKERS)


def list_releases() -> list[str]:
    """Release folders under each models/colorflow root: "." for a root that is itself a release,
    else the sub-folder name."""
    names: list[str] = []
    for root in comfy.model_roots():
        if not root.is_dir():
            continue
        if _is_release(root):
            names.append(".")
        names += sorted(p.name for p in root.iterdir() if p.is_dir() and _is_release(p))
    return list(dict.fromkeys(names)) or [NO_RELEASE]


def resolve_release(name: str) -> Path:
    """The folder of a listed release (or an absolute path); WeightsError saying where to put it."""
    path = Path(name).expanduser()
    roots = comfy.model_roots()
    candidates = [path] if path.is_absolute() else [root / name for root in roots]
    for candidate in candidates:
        if candidate.is_dir() and _is_release(candidate):
            return candidate
    from colorflow_core.release.paths import RELEASE_FOLDERS, RELEASE_REPO

    where = ", ".join(str(r) for r in roots) or "models/colorflow (or $COLORFLOW_MODELS)"
    what = "no ColorFlow release was found" if name == NO_RELEASE else f"the ColorFlow release {name!r} was not found"
    raise WeightsError(
        f"{what} in {where}. Download {RELEASE_REPO} (https://huggingface.co/{RELEASE_REPO}) into a sub-folder "
        f"there, e.g. models/colorflow/ColorFlow/ holding {RELEASE_FOLDERS}, then refresh the node list (press R)."
    )


def last_loaded(release_dir: Path, device, dtype):
    """The live engine this node loaded last for this release on ``device`` / ``dtype``, or None."""
    ref = _LAST_LOADED.get((str(release_dir.resolve()), str(device), str(dtype)))
    engine = ref() if ref is not None else None
    # ColorFlow.load refuses to share networks across devices / dtypes: skip one moved elsewhere since
    return engine if engine is not None and engine.device == device and engine.dtype == dtype else None


def _remember(release_dir: Path, engine) -> None:
    _LAST_LOADED[(str(release_dir.resolve()), str(engine.device), str(engine.dtype))] = weakref.ref(engine)


def list_bases() -> list[str]:
    """Bases: the hub default, diffusers folders ("diffusers/<name>": SD1.5 or PixArt-alpha), single
    SD1.5 .safetensors checkpoints ("checkpoints/<file>")."""
    names = [HUB_BASE]
    roots = comfy.base_model_roots()
    for root in roots["diffusers"]:
        if root.is_dir():
            names += sorted(f"diffusers/{p.name}" for p in root.iterdir() if (p / "model_index.json").is_file())
    for root in roots["checkpoints"]:
        if root.is_dir():
            names += sorted(f"checkpoints/{p.relative_to(root).as_posix()}" for p in root.rglob("*.safetensors"))
    return list(dict.fromkeys(names))


def resolve_base(name: str) -> str | None:
    """None for the hub default, else the listed folder / file (or an absolute path)."""
    if name == HUB_BASE:
        return None
    path = Path(name).expanduser()
    if path.is_absolute():
        if not path.exists():
            raise WeightsError(f"base model {path} does not exist")
        return str(path)
    kind, _, rest = name.partition("/")
    roots = comfy.base_model_roots().get(kind, [])
    for root in roots:
        if (root / rest).exists():
            return str(root / rest)
    raise WeightsError(
        f"base model {name!r} not found (looked in {', '.join(str(r) for r in roots) or 'no folder'}): put a "
        f"diffusers SD1.5 / PixArt-alpha folder in models/diffusers/ or a single SD1.5 .safetensors file in "
        f"models/checkpoints/, then refresh the node list (press R)"
    )


class LoadColorFlowModel:
    """Loads the networks of one style once; ComfyUI keeps the handle cached while its inputs stay
    the same, and offloads the networks to the CPU when another model needs the GPU."""

    DESCRIPTION = (
        "Loads ColorFlow for one input style: the release files (TencentARC/ColorFlow, in models/colorflow) "
        "plus its base model (SD1.5 for screenstyle, PixArt-alpha for sketch / shading). The networks are moved "
        "to the GPU only while a ColorFlow node runs; ComfyUI offloads them when another model needs the memory."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "load"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded ColorFlow model, for Reference Pool, Retrieve References, In-Context Colorize "
                       "and Guided Upscale.",)

    @classmethod
    def INPUT_TYPES(cls):
        from colorflow_core.engine import STYLES

        return {
            "required": {
                "style": (list(STYLES), {
                    "default": STYLES[0],
                    "tooltip": "Input style: screenstyle = gray or screentoned manga pages (SD1.5 + GraySD); "
                               "sketch = line art, shading = line art with flat shading (PixArt-alpha).",
                }),
                "release": (list_releases(), {
                    "tooltip": "The ColorFlow release folder inside models/colorflow (or a folder added for "
                               "'colorflow' in extra_model_paths.yaml); '.' = the files sit directly in it.",
                }),
                "base": (list_bases(), {
                    "default": HUB_BASE,
                    "tooltip": "The base model: screenstyle needs SD1.5 (a diffusers folder from "
                               "models/diffusers or a single .safetensors from models/checkpoints), sketch / "
                               "shading need PixArt-XL-2-1024-MS (a diffusers folder). 'hub default' = "
                               "stable-diffusion-v1-5 / PixArt-alpha from the Hugging Face cache.",
                }),
                "dtype": (list(DTYPES), {
                    "default": "auto",
                    "tooltip": "Weights precision: auto = fp16 on a GPU, fp32 on the CPU.",
                }),
            },
            "optional": {
                "screentone": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "ScreenStyle only: run the ScreenVAE screentone preprocessing (the original's "
                               "behaviour). Off = use the gray page itself as the condition.",
                }),
                "allow_download": ("BOOLEAN", {
                    "default": False,
                    "tooltip": "Download missing release / base files from the Hugging Face hub (about 12.8 GB "
                               "for the whole release). Off = use only files already on disk.",
                }),
                "encoder": ("STRING", {
                    "default": DEFAULT_ENCODER,
                    "tooltip": f"Retrieval image encoder: {ENCODER_HELP}. A Reference Pool embedded with one "
                               f"encoder is embedded again for another.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, release=None):
        """A missing release gets an actionable message before anything runs (not 'value not in list')."""
        try:
            if release is not None:
                resolve_release(release)
        except WeightsError as exc:
            return str(exc)
        return True

    def load(self, style: str, release: str, base: str, dtype: str, screentone: bool = True,
             allow_download: bool = False, encoder: str = DEFAULT_ENCODER):
        from colorflow_core.engine import ColorFlow
        from colorflow_core.runtime.performance import SpeedOptions, resolve_device, resolve_dtype

        if dtype not in DTYPES:
            raise WeightsError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        release_dir = resolve_release(release)
        base_path = resolve_base(base)
        device = resolve_device(comfy.load_device())
        engine = ColorFlow.load(
            style, release=str(release_dir), base=base_path, device=device, dtype=dtype,
            screentone=screentone, allow_download=allow_download, encoder=encoder.strip(),
            reuse=last_loaded(release_dir, device, resolve_dtype(dtype, device)),
            speed=SpeedOptions(offload="none"),  # ComfyUI's model manager does the offloading
        )
        _remember(release_dir, engine)
        description = f"{style}, release {release_dir}, base {base_path or HUB_BASE}, {dtype}"
        return (comfy.ManagedModel(engine, description),)
