"""ColorFlow as a patch on a ComfyUI ``MODEL``: the native path that rides on ComfyUI's own sampling.

The self-contained In-Context Colorize node runs its own SD1.5; here the user's SD1.5 MODEL (after
any LoraLoader chain) is patched instead, so KSampler, ControlNetApply and style LoRAs mix freely:

* the ColorGuider runs once per UNet evaluation inside a ``DIFFUSION_MODEL`` wrapper, which sees
  exactly what ComfyUI's UNet sees (``c_in * x`` and ``model_sampling.timestep(sigma)``) and the
  CFG layout (``transformer_options["cond_or_uncond"]``, each chunk holding every page in order);
* its conditioning is that of the self-contained pipeline (`colorflow_core.conditioning`: 5 or 9
  channels, as the guider's config says), encoded by the graph's VAE;
* its 12 down / 1 mid / 15 up residuals enter through ComfyUI's block patches:
  down 0 after the first skip was saved (``input_block_patch_after_skip``), down 1..11 before the
  skip is saved (``input_block_patch``), mid and each output block's last residual at the start of
  the next output block (``output_block_patch``). ComfyUI has no patch point inside an output block
  (before its Upsample) nor after the last one, so those four residuals are added by torch hooks
  that the wrapper registers on the UNet's own layers for the duration of that one call;
* the ColorFlow LoRA is converted to kohya keys and added with ``ModelPatcher.add_patches``;
* the guider is a ``ModelPatcher`` registered as an additional model, so ComfyUI's memory manager
  loads it with the UNet and offloads it like any other model.

This module patches ComfyUI objects, so unlike the rest of ``nodes/`` it imports ``comfy`` itself;
outside ComfyUI it still imports (the nodes then refuse to run with a clear message).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import torch
from PIL import Image

from colorflow_core.colorize.conditioning import conditioning_images, guider_conditioning
from colorflow_core.errors import InputError, WeightsError, check_number
from colorflow_core.sizes import LATENT_SCALE

from ..tensors import tensor_from_images

if TYPE_CHECKING:  # diffusers is imported when a node runs, not when ComfyUI loads the pack
    from colorflow_core.colorize.sd.guider import ColorGuiderSDModel, GuiderResiduals


# ComfyUI's modules, bound by `require_comfy` when a native node first runs (not at import: the pack
# loads fast, and imports outside ComfyUI before $COMFYUI_DIR is on sys.path stay harmless).
comfy_lora = model_management = model_patcher = patcher_extension = supported_models = None
DiagonalGaussianRegularizer = UNetModel = Upsample = None

GUIDER_FOLDER, LORA_FILE = "GraySD", "unet_lora.bin"
_UNCOND_INDEX = 1  # index of the negative prompt in comfy.samplers.sampling_function's conds list
PATCH_KEY = "colorflow"  # key of our wrapper, our additional model and the per-call feed


def require_comfy() -> None:
    """Import ComfyUI's modules on first use; a clear error outside ComfyUI."""
    global comfy_lora, model_management, model_patcher, patcher_extension, supported_models
    global DiagonalGaussianRegularizer, UNetModel, Upsample
    if comfy_lora is not None:
        return
    try:
        import comfy.lora as lora
        import comfy.model_management as management
        import comfy.model_patcher as patcher
        import comfy.patcher_extension as extension
        import comfy.supported_models as models
        from comfy.ldm.models.autoencoder import DiagonalGaussianRegularizer as regularizer
        from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel as unet
        from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample as upsample
    except ImportError as exc:
        raise InputError(f"the native ColorFlow nodes need ComfyUI (comfy.* could not be imported: {exc})") from exc
    model_management, model_patcher, patcher_extension, supported_models = management, patcher, extension, models
    DiagonalGaussianRegularizer, UNetModel, Upsample = regularizer, unet, upsample
    comfy_lora = lora  # last: it marks the imports done


def check_sd15(model: Any) -> None:
    """Refuse anything but an SD1.5 MODEL: the guider and LoRA were trained on SD1.5's UNet."""
    require_comfy()
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    name = type(config).__name__ if config is not None else type(model).__name__
    if not isinstance(config, supported_models.SD15) or isinstance(config, supported_models.SD15_instructpix2pix) \
            or not isinstance(getattr(base, "diffusion_model", None), UNetModel):
        raise InputError(f"ColorFlow Apply supports Stable Diffusion 1.5 models only (the ColorGuider and the "
                         f"ColorFlow LoRA were trained on SD1.5); this MODEL is {name}. Load an SD1.5 checkpoint.")


@dataclass(frozen=True)
class ResidualSlots:
    """Where the guider's up residuals go in ComfyUI's output blocks (derived from the UNet's layout).

    ``post[k]``: the residual added after output block k (at the start of block k+1, or by a hook
    after the last block); ``pre_upsample[k]``: the one added inside block k before its Upsample.
    """

    n_down: int
    post: tuple[int, ...]
    pre_upsample: dict[int, int]

    @property
    def n_up(self) -> int:
        return len(self.post) + len(self.pre_upsample)


def residual_slots(diffusion_model: torch.nn.Module) -> ResidualSlots:
    """One down residual per input block; per output block one, plus one before an Upsample."""
    require_comfy()
    post: list[int] = []
    pre: dict[int, int] = {}
    index = 0
    for k, block in enumerate(diffusion_model.output_blocks):
        ups = [i for i, layer in enumerate(block) if isinstance(layer, Upsample)]
        if ups:
            if ups != [len(block) - 1]:
                raise InputError(f"output block {k} of this UNet has an Upsample that is not its last layer")
            pre[k] = index
            index += 1
        post.append(index)
        index += 1
    return ResidualSlots(len(diffusion_model.input_blocks), tuple(post), pre)


def _check_guider_fits(guider: ColorGuiderSDModel, slots: ResidualSlots) -> None:
    n_down, n_up = len(guider.brushnet_down_blocks), len(guider.brushnet_up_blocks)
    if (n_down, n_up) != (slots.n_down, slots.n_up):
        raise InputError(f"the ColorGuider gives {n_down} down / {n_up} up residuals but this UNet has "
                         f"{slots.n_down} input blocks / {slots.n_up} output-block injection points: "
                         "they are not the same architecture")


def _added(h: torch.Tensor, residual: torch.Tensor, where: str) -> torch.Tensor:
    if residual.shape != h.shape:
        raise InputError(f"ColorGuider residual {tuple(residual.shape)} does not fit the UNet's {where} "
                         f"{tuple(h.shape)}: guider and UNet architectures differ")
    return h + residual


def conditioning_latents(vae: Any, canvases: Sequence[Image.Image], masks: Sequence[Image.Image],
                         seeds: Sequence[int], scale_factor: float, channels: int) -> torch.Tensor:
    """(P, 2, channels, h, w): per page its [uncond, cond] guider conditioning.

    The images a guider of ``channels`` takes (`conditioning.conditioning_images`: the canvas, or
    the canvas without its page and the page alone) are encoded by ComfyUI's VAE; their posterior
    samples × scale factor and the mask channel are stacked as in the self-contained pipeline, with
    page i's draws from a generator seeded with seed + i (ARCHITECTURE "Random draws"), so a page's
    conditioning never depends on its batch.
    """
    require_comfy()
    first_stage = getattr(vae, "first_stage_model", None)
    if getattr(vae, "latent_channels", None) != 4 or not isinstance(
            getattr(first_stage, "regularization", None), DiagonalGaussianRegularizer) \
            or not hasattr(first_stage, "quant_conv"):
        raise InputError("ColorFlow Apply needs the SD1.5 VAE (a 4-channel KL autoencoder); this VAE is another kind")
    model_management.load_models_gpu([vae.patcher])
    out = []
    for canvas, mask, seed in zip(canvases, masks, seeds):
        posteriors = []
        for image in conditioning_images(canvas, channels):
            pixels = tensor_from_images([image]).movedim(-1, 1)
            with torch.no_grad():
                x = vae.process_input(pixels).to(vae.device, vae.vae_dtype)
                moments = first_stage.quant_conv(first_stage.encoder(x)).float().cpu()
            mean, logvar = moments.chunk(2, dim=1)
            posteriors.append((mean, torch.exp(0.5 * logvar.clamp(-30.0, 20.0))))
        out.append(guider_conditioning(posteriors, mask, seed, scale_factor))
    return torch.stack(out)


class _Feed:
    """The residuals of one UNet evaluation, read by the block patches and hooks."""

    def __init__(self, residuals: GuiderResiduals, slots: ResidualSlots, device: torch.device, dtype: torch.dtype):
        self.down = [r.to(device, dtype) for r in residuals.down]
        self.mid = residuals.mid.to(device, dtype)
        self.up = [r.to(device, dtype) for r in residuals.up]
        self.slots = slots


def _input_block_patch(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """Down residuals 1.. : added before ComfyUI stores the skip (the sum is the skip)."""
    feed = transformer_options.get(PATCH_KEY)
    block = transformer_options["block"][1]
    if feed is None or block == 0:
        return h
    return _added(h, feed.down[block], f"input block {block}")


def _input_block_patch_after_skip(h: torch.Tensor, transformer_options: dict) -> torch.Tensor:
    """Down residual 0: the skip keeps conv_in's plain output, the path goes on with the sum)."""
    feed = transformer_options.get(PATCH_KEY)
    if feed is None or transformer_options["block"][1] != 0:
        return h
    return _added(h, feed.down[0], "input block 0")


def _output_block_patch(h: torch.Tensor, hsp: torch.Tensor, transformer_options: dict):
    """Mid residual before output block 0; before block k>0 the residual that ends block k-1."""
    feed = transformer_options.get(PATCH_KEY)
    if feed is None:
        return h, hsp
    k = transformer_options["block"][1]
    if k == 0:
        return _added(h, feed.mid, "middle block output"), hsp
    return _added(h, feed.up[feed.slots.post[k - 1]], f"output block {k - 1} output"), hsp


class _GuiderWrapper:
    """DIFFUSION_MODEL wrapper: runs the guider once on the UNet's own batch, then the UNet with the feed."""

    def __init__(self, guider_patcher: Any, conditioning: torch.Tensor, strength: float,
                 sigma_range: tuple[float, float], slots: ResidualSlots):
        self.guider_patcher = guider_patcher
        self.conditioning = conditioning  # (P, 2, C, h, w) on the CPU: [uncond, cond] per page
        self.strength = strength
        self.sigma_start, self.sigma_end = sigma_range
        self.slots = slots

    def _active(self, transformer_options: dict) -> bool:
        sigmas = transformer_options.get("sigmas")
        if sigmas is None:  # not called by a sampler: no schedule to gate on
            return True
        sigma = float(sigmas.reshape(-1)[0])
        return self.sigma_end <= sigma <= self.sigma_start

    def batch_conditioning(self, x: torch.Tensor, transformer_options: dict) -> torch.Tensor:
        """The per-page conditioning laid out as ComfyUI laid out the batch: one chunk per cond_or_uncond entry."""
        chunks = transformer_options.get("cond_or_uncond")
        if not chunks:
            raise InputError("ColorFlow: the model was called without ComfyUI's cond_or_uncond batch layout")
        pages, _, _, h, w = self.conditioning.shape
        if x.shape[0] % len(chunks) or x.shape[0] // len(chunks) != pages:
            raise InputError(f"ColorFlow: the sampled latent batch has {x.shape[0] // len(chunks)} page(s) per "
                             f"prompt but the retrieval context has {pages}; use the LATENT from ColorFlow Apply")
        if tuple(x.shape[-2:]) != (h, w):
            px = LATENT_SCALE
            raise InputError(f"ColorFlow: the sampled latent is {x.shape[-1] * px}x{x.shape[-2] * px} px but the "
                             f"canvas is {w * px}x{h * px}; use the LATENT from ColorFlow Apply (and no area "
                             f"conditioning)")
        # ComfyUI's sampling_function batches conds = [positive, negative]: entry 1 is the negative
        # prompt (diffusers' "uncond" half, draw 0); 0 (and any extra positive of custom guiders) is draw 1.
        return torch.cat([self.conditioning[:, 0 if c == _UNCOND_INDEX else 1] for c in chunks])

    def __call__(self, executor: Callable, x: torch.Tensor, timesteps: torch.Tensor, context: Any, y: Any,
                 control: Any, transformer_options: dict, **kwargs: Any) -> torch.Tensor:
        if self.strength == 0.0 or not self._active(transformer_options):
            return executor(x, timesteps, context, y, control, transformer_options, **kwargs)
        guider = self.guider_patcher.model.guider
        param = next(guider.parameters())
        cond = self.batch_conditioning(x, transformer_options)
        with torch.no_grad():
            residuals = guider(x.to(param.device, param.dtype), timesteps.to(param.device),
                               cond.to(param.device, param.dtype), conditioning_scale=self.strength)
        feed = _Feed(residuals, self.slots, x.device, x.dtype)
        options = dict(transformer_options)
        options[PATCH_KEY] = feed
        unet = executor.class_obj
        handles = []
        try:
            for k, index in self.slots.pre_upsample.items():
                handles.append(unet.output_blocks[k][-1].register_forward_pre_hook(
                    _pre_hook(feed.up[index], f"output block {k} before its Upsample"), with_kwargs=True))
            last = len(unet.output_blocks) - 1
            handles.append(unet.output_blocks[last][-1].register_forward_hook(
                _post_hook(feed.up[self.slots.post[last]], f"output block {last} output")))
            return executor(x, timesteps, context, y, control, options, **kwargs)
        finally:
            for handle in handles:
                handle.remove()


def _pre_hook(residual: torch.Tensor, where: str) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict):
        return (_added(args[0], residual, where),) + tuple(args[1:]), kwargs
    return hook


def _post_hook(residual: torch.Tensor, where: str) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        return _added(output, residual, where)
    return hook


class _ManagedGuider(torch.nn.Module):
    """Plain container: ModelPatcher sets attributes (``device``...) that diffusers' ModelMixin makes read-only."""

    def __init__(self, guider: ColorGuiderSDModel) -> None:
        super().__init__()
        self.guider = guider


def make_guider_patcher(guider: ColorGuiderSDModel) -> Any:
    """The guider as a ComfyUI-managed model (loaded/offloaded by ComfyUI's memory manager)."""
    require_comfy()
    return model_patcher.ModelPatcher(_ManagedGuider(guider), load_device=model_management.get_torch_device(),
                                      offload_device=model_management.unet_offload_device())


def apply_lora(model: Any, kohya_lora: Mapping[str, torch.Tensor], strength: float) -> None:
    """Add the (kohya-keyed) ColorFlow LoRA to ``model`` through ComfyUI's LoRA patching; every module must land."""
    require_comfy()
    key_map = comfy_lora.model_lora_keys_unet(model.model, {})
    modules = sorted({k.rsplit(".", 2)[0] if k.endswith(".weight") else k.rsplit(".", 1)[0] for k in kohya_lora})
    unknown = [m for m in modules if m not in key_map]
    if unknown:
        raise WeightsError(f"{len(unknown)} of {len(modules)} ColorFlow LoRA modules have no match in this UNet "
                           f"(e.g. {unknown[0]}): the LoRA is for a different architecture")
    patches = comfy_lora.load_lora(kohya_lora, {m: key_map[m] for m in modules}, log_missing=False)
    loaded = model.add_patches(patches, strength)
    if len(loaded) != len(modules):
        raise WeightsError(f"only {len(loaded)} of {len(modules)} ColorFlow LoRA modules were applied")


def patch_model(model: Any, guider_patcher: Any, conditioning: torch.Tensor, *, strength: float = 1.0,
                kohya_lora: Mapping[str, torch.Tensor] | None = None, lora_strength: float = 1.0,
                start_percent: float = 0.0, end_percent: float = 1.0) -> Any:
    """A clone of the SD1.5 ``model`` carrying the ColorGuider (per-page ``conditioning`` (P,2,C,h,w)) and LoRA."""
    for name, value, low, high in (("guider strength", strength, 0.0, 5.0), ("LoRA strength", lora_strength, -5.0, 5.0),
                                   ("start percent", start_percent, 0.0, 1.0), ("end percent", end_percent, 0.0, 1.0)):
        check_number(name, value, low, high)
    if start_percent > end_percent:
        raise InputError(f"start percent {start_percent} is after end percent {end_percent}")
    check_sd15(model)
    slots = residual_slots(model.model.diffusion_model)
    guider = guider_patcher.model.guider
    _check_guider_fits(guider, slots)
    if conditioning.ndim != 5 or conditioning.shape[1] != 2 or conditioning.shape[2] != guider.config.conditioning_channels:
        raise InputError(f"guider conditioning must be (pages, 2, {guider.config.conditioning_channels}, h, w), "
                         f"got {tuple(conditioning.shape)}")
    sampling = model.get_model_object("model_sampling")
    sigma_range = (sampling.percent_to_sigma(start_percent), sampling.percent_to_sigma(end_percent))

    patched = model.clone()
    if kohya_lora is not None and lora_strength != 0.0:
        apply_lora(patched, kohya_lora, lora_strength)
    patched.set_model_input_block_patch(_input_block_patch)
    patched.set_model_input_block_patch_after_skip(_input_block_patch_after_skip)
    patched.set_model_output_block_patch(_output_block_patch)
    patched.remove_wrappers_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY)
    patched.add_wrapper_with_key(patcher_extension.WrappersMP.DIFFUSION_MODEL, PATCH_KEY,
                                 _GuiderWrapper(guider_patcher, conditioning.detach().cpu(), strength, sigma_range, slots))
    patched.set_additional_models(PATCH_KEY, [guider_patcher])
    return patched


@dataclass
class NativeRelease:
    """What ColorFlow Apply needs from the release: the managed guider and the kohya-keyed LoRA."""

    guider: Any  # ModelPatcher around ColorGuiderSDModel
    lora: dict[str, torch.Tensor]
    folder: str

    def __repr__(self) -> str:
        return f"ColorFlow guider + LoRA ({self.folder})"


def load_native_release(folder: str | os.PathLike, dtype: torch.dtype | None = None) -> NativeRelease:
    """Load ``GraySD/`` (guider) and ``GraySD/unet_lora.bin`` (converted to kohya keys)."""
    require_comfy()
    gray = Path(folder) / GUIDER_FOLDER
    lora_file = gray / LORA_FILE
    if not lora_file.is_file():
        raise WeightsError(f"ColorFlow LoRA not found: {lora_file} (download GraySD/ of TencentARC/ColorFlow)")
    dtype = dtype or model_management.unet_dtype()
    from colorflow_core.colorize.lora_convert import unet_lora_to_kohya
    from colorflow_core.colorize.sd.guider import ColorGuiderSDModel
    from colorflow_core.weights import load_state_dict_file

    guider = ColorGuiderSDModel.from_release_folder(gray, dtype=dtype, device=model_management.unet_offload_device())
    lora = unet_lora_to_kohya(load_state_dict_file(lora_file), source=lora_file)
    return NativeRelease(make_guider_patcher(guider), lora, str(folder))
