"""Retrieve References: style preprocessing + retrieval for every page, and the stitched canvases."""
from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from colorflow_core.errors import InputError, check_number
from colorflow_core.images import check_page
from colorflow_core.retrieve.canvas import MAX_TOP_K
from colorflow_core.retrieve.pinning import parse_refs_map_text, resolve_refs_map
from colorflow_core.retrieve.record import RetrievalRecord, records_to_json
from colorflow_core.runtime.seeding import MAX_SEED, WIDGET_MAX_SEED, check_generator_device
from colorflow_core.sizes import MAX_SIDE, MIN_SIDE, PRESETS, SIZE_MULTIPLE, PageSize

from . import comfy
from .colorize import generator_device_input
from .tensors import images_from_tensors, mask_from_images, tensor_from_images
from .types import CONTEXT_TYPE, MODEL_TYPE, POOL_TYPE
from .widgets import widget_errors

CUSTOM = "custom"
SIZE_CHOICES = (*PRESETS, CUSTOM)
PREVIEW_SIDE = 768  # the annotated canvases' long side (every page's preview the same size: one batch)
PINNED_SOURCE = "Retrieve References: pinned_references"


def page_size(size: str, width: int, height: int) -> PageSize:
    """A preset, or the custom width x height rounded to a usable size (multiples of 32)."""
    if size == CUSTOM:
        return PageSize.snap(width, height)
    if size not in PRESETS:
        raise InputError(f"size must be one of {', '.join(SIZE_CHOICES)}, got {size!r}")
    return PRESETS[size]


@dataclass
class RetrievedPages:
    """What In-Context Colorize and Guided Upscale need from retrieval, for every page in order."""

    size: PageSize
    pages: list  # colorflow_core.engine.PageContext

    def __len__(self) -> int:
        return len(self.pages)

    def __repr__(self) -> str:
        return f"ColorFlow context ({len(self.pages)} pages of {self.size})"


def _first(value, name: str):
    """INPUT_IS_LIST hands every input over as a list; settings must be single values."""
    if isinstance(value, list):
        if len({repr(v) for v in value}) > 1:
            raise InputError(f"Retrieve References: {name} got {len(value)} different values; connect only one")
        return value[0]
    return value


class RetrieveReferences:
    """Runs the style preprocessing of each page and picks, per page patch, the most similar
    reference patches; the page and its picks form the in-context canvas."""

    DESCRIPTION = (
        "For every page: fits it to the page size (centre-crop if its aspect ratio is off by more than 15%), "
        "runs the style preprocessing (ScreenStyle screentone), and stitches the top-k most similar reference "
        "patches around it into a 2W x 2H canvas. Pages may have any sizes (a batch or a list). Outputs the "
        "context for In-Context Colorize plus the canvases and their masks (white = the page) for preview, "
        "the retrieval records (JSON: per page, which reference and which of its patches fills each canvas cell, "
        "with the similarity) and the canvases annotated with each cell's reference and score. Optionally pins "
        "or excludes references per page (pinned_references)."
    )
    CATEGORY = "ColorFlow"
    FUNCTION = "retrieve"
    INPUT_IS_LIST = True
    RETURN_TYPES = (CONTEXT_TYPE, "IMAGE", "MASK", "STRING", "IMAGE")
    RETURN_NAMES = ("context", "canvases", "masks", "retrieval", "annotated_canvases")
    OUTPUT_TOOLTIPS = (
        "Preprocessed pages with their retrieved references, for In-Context Colorize and Guided Upscale.",
        "The stitched canvases (2W x 2H), one per page in order: the page in the centre, references around it.",
        "The canvas masks (1 = the page region that gets coloured).",
        "The retrieval records as JSON, a list with one per page (format colorflow-retrieval/1): for each canvas "
        "cell the reference (file name when the Reference Pool read a folder, else null, and always its "
        "reference_index from 0), which of its patches (whole or crop 1-4) and the similarity.",
        f"The canvases at most {PREVIEW_SIDE} px a side, each cell labelled with its reference (file name, or "
        f"r<n>: the n-th reference of the pool) and similarity: what each page is coloured from.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (MODEL_TYPE, {"tooltip": "From Load ColorFlow Model."}),
                "pages": ("IMAGE", {"tooltip": "The black-and-white pages, in reading order: a batch or a list "
                                               "of any sizes (e.g. from Load Image Sequence)."}),
                "pool": (POOL_TYPE, {"tooltip": "From Reference Pool."}),
                "size": (list(SIZE_CHOICES), {
                    "default": "512x800",
                    "tooltip": "Page size W x H the model works at (the three sizes ColorFlow was trained on), "
                               "or custom (width / height below).",
                }),
                "width": ("INT", {
                    "default": 512, "min": MIN_SIDE, "max": MAX_SIDE, "step": SIZE_MULTIPLE,
                    "tooltip": "Custom page width (size = custom only), rounded to a multiple of 32.",
                }),
                "height": ("INT", {
                    "default": 800, "min": MIN_SIDE, "max": MAX_SIDE, "step": SIZE_MULTIPLE,
                    "tooltip": "Custom page height (size = custom only), rounded to a multiple of 32.",
                }),
                "top_k": ("INT", {
                    "default": 3, "min": 1, "max": MAX_TOP_K,
                    "tooltip": f"Reference patches placed per page patch (the canvas has room for {MAX_TOP_K}).",
                }),
                "preprocess_seed": ("INT", {
                    "default": 0, "min": 0, "max": WIDGET_MAX_SEED,
                    "tooltip": "Seed of the ScreenStyle screentone noise; page i uses seed + i.",
                }),
            },
            "optional": {
                "names": ("STRING", {"forceInput": True,
                                     "tooltip": "Page names (e.g. Load Image Sequence's names), kept with "
                                                "the pages."}),
                "generator_device": generator_device_input("the ScreenStyle screentone noise (screenstyle with "
                                                           "screentone on)"),
                "pinned_references": ("STRING", {
                    "default": "", "multiline": True,
                    "tooltip": 'Optional: the references some pages may use, as JSON. Keys: page names or numbers '
                               '(from 1); values: a list of reference file names / globs or numbers (from 1, as '
                               'r<n> on the annotated canvases) to pin, or {"exclude": [...]}. Example: '
                               '{"p3": ["hero*.png"], "5": {"exclude": [2]}}. Other pages use the whole pool.',
                }),
            },
        }

    def retrieve(self, model, pages, pool, size, width, height, top_k, preprocess_seed, names=None,
                 generator_device=None, pinned_references=None):
        model, pool = _first(model, "model"), _first(pool, "pool")
        top_k, preprocess_seed = _first(top_k, "top_k"), _first(preprocess_seed, "preprocess_seed")
        with widget_errors("Retrieve References"):  # the widgets, checked before any model runs
            target = page_size(_first(size, "size"), _first(width, "width"), _first(height, "height"))
            check_number("top_k", top_k, 1, MAX_TOP_K, integer=True)
            check_number("preprocess_seed", preprocess_seed, 0, MAX_SEED, integer=True)
            generator_device = check_generator_device(_first(generator_device or ["cpu"], "generator_device"))
        page_images = images_from_tensors(pages, "Retrieve References: pages")
        names = [str(n) for n in names] if names else []
        if names and len(names) != len(page_images):
            raise InputError(f"Retrieve References: {len(names)} names for {len(page_images)} pages; connect the "
                             f"names output of the same Load Image Sequence as the pages")
        for i, page in enumerate(page_images):  # a tiny page is named before any model runs
            check_page(page, f"Retrieve References: page {i + 1}" + (f" ({names[i]})" if names else ""))
        names = names or [f"page{i + 1}" for i in range(len(page_images))]
        reference_names = list(getattr(pool, "names", None) or [None] * len(pool))
        rules = parse_refs_map_text(_first(pinned_references or [""], "pinned_references") or "", PINNED_SOURCE)
        allowed = resolve_refs_map(rules, names, reference_names, source=PINNED_SOURCE, top_k=top_k,
                                   page_numbers=True) if rules else None
        try:
            reference_pool = pool.embedded(model, target, progress=comfy.progress_callback(len(pool)))
            engine = model.use()
            contexts = engine.prepare(
                page_images, reference_pool, target, top_k=top_k, seed=preprocess_seed, names=names,
                progress=comfy.progress_callback(len(page_images)), generator_device=generator_device,
                allowed=allowed,
            )
        finally:
            model.done()
        canvases = tensor_from_images([c.retrieval.canvas for c in contexts])
        masks = mask_from_images([c.retrieval.mask for c in contexts])
        records = [RetrievalRecord.from_result(c.retrieval, c.name, None, reference_names) for c in contexts]
        annotated = tensor_from_images(annotated_canvases(contexts, reference_names))
        return (RetrievedPages(target, list(contexts)), canvases, masks, records_to_json(records), annotated)


def annotated_canvases(contexts, reference_names) -> list:
    """Each page's canvas with every cell labelled "<reference> <score>", all of one size (one batch)."""
    sheets = [c.retrieval.retrieval_sheet(PREVIEW_SIDE, reference_names) for c in contexts]
    size = sheets[0].size if sheets else (1, 1)
    return [s if s.size == size else s.resize(size, Image.Resampling.BICUBIC) for s in sheets]
