"""Runtime placement and speed settings: device, dtype, batch size, offload, channels-last, compile.

These choices change speed and memory only (dtype aside, which rounds differently): a page's numbers
never depend on the batch size, the offload mode or the memory layout. They are decided from a few
facts — the device kind, its free memory, the models' sizes and a page's working memory — so they
live together here, and the engine asks this module instead of hard-coding CUDA or fp16.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Sequence, TypeVar

import torch
from torch import nn

from ..errors import ColorFlowError, InputError

OFFLOAD_MODES = ("none", "model", "sequential")
_DTYPES = {
    "fp32": torch.float32, "float32": torch.float32,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
}
# Working memory of one page (both CFG halves through UNet + guider, SDPA attention) per latent
# pixel and per byte of the compute dtype: a deliberately generous estimate, only used to size
# batches and to decide whether the models can stay resident. (PixArt passes its own factor.)
BYTES_PER_LATENT_PIXEL_PER_DTYPE_BYTE = 48 * 1024
# On a CPU, batching pages gives no speed, only memory: benchmarks/chapter.py --quick measured ICP
# 41.7 s batched (4) vs 40.4 s one by one, GSRP 15.8 vs 13.7 s, peak RSS +0.9 GB.
CPU_MAX_BATCH = 1
# At ColorFlow's canvases (a 512x800 page = 25,600 latent tokens) the UNet is compute-bound from
# batch 1; batching only trims per-call overheads. Three pages (~1.1 GB each in fp16 by activation
# arithmetic) plus ~6.3 GB of resident weights keep the peak under 10 GB; more adds memory, not speed.
CUDA_MAX_BATCH = 3
# GSRP at the 1.5x size is memory-bound in the VAE decoder: measured, batch 1 is fastest on a CPU
# (above) and more than 2 pages per batch gains nothing on CUDA.
GSRP_CUDA_MAX_BATCH = 2
MEMORY_BUDGET_FRACTION = 0.7  # of free memory; the rest covers allocator fragmentation and the VAE
# The repeated transformer blocks of the UNet, the guiders and PixArt: most of the compute at
# ColorFlow's canvas sizes (attention over 2W/8 x 2H/8 tokens).
COMPILE_BLOCKS = ("BasicTransformerBlock",)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None`` / ``"auto"`` → CUDA when there is a GPU, else the CPU; anything else as given."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"unknown device {device!r}: use 'cpu', 'cuda' or 'cuda:N'") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} was asked for but this torch build sees no CUDA GPU")
    return resolved


def resolve_dtype(dtype: str | torch.dtype = "auto", device: str | torch.device = "cpu") -> torch.dtype:
    """``"auto"`` → float16 on CUDA, float32 elsewhere; names ("fp16", "bf16", ...) or torch dtypes.

    float16 on the CPU is refused: many CPU kernels lack it or run it slower than float32.
    """
    device = torch.device(device)
    if isinstance(dtype, torch.dtype):
        resolved = dtype
    elif dtype == "auto":
        resolved = torch.float16 if device.type == "cuda" else torch.float32
    elif isinstance(dtype, str) and dtype.lower() in _DTYPES:
        resolved = _DTYPES[dtype.lower()]
    else:
        raise InputError(f"unknown dtype {dtype!r}: use 'auto', 'fp32', 'fp16' or 'bf16'")
    if resolved not in (torch.float32, torch.float16, torch.bfloat16):
        raise InputError(f"dtype {resolved} is not supported: use float32, float16 or bfloat16")
    if resolved == torch.float16 and device.type == "cpu":
        raise InputError("float16 is not supported on the CPU: use fp32 (default) or bf16")
    if resolved == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InputError(f"this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16 support: use fp16")
    return resolved


def free_device_memory(device: str | torch.device) -> int | None:
    """Free bytes on a CUDA device (what the driver reports); None for devices without a budget."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    free, _total = torch.cuda.mem_get_info(device)
    return int(free)


def module_bytes(module: nn.Module, dtype: torch.dtype | None = None) -> int:
    """Bytes of a module's parameters and buffers, floating ones counted in ``dtype`` when given."""
    total = 0
    for tensor in list(module.parameters()) + list(module.buffers()):
        size = tensor.element_size()
        if dtype is not None and tensor.is_floating_point():
            size = torch.finfo(dtype).bits // 8
        total += tensor.numel() * size
    return total


def page_working_bytes(hw: tuple[int, int], dtype: torch.dtype,
                       bytes_per_pixel: int = BYTES_PER_LATENT_PIXEL_PER_DTYPE_BYTE) -> int:
    """Estimated working memory of one page of ``hw`` pixels; ``bytes_per_pixel`` per byte of
    ``dtype`` (default: the UNet + guider CFG batch per latent pixel)."""
    h, w = hw
    return h * w * bytes_per_pixel * (torch.finfo(dtype).bits // 8)


T = TypeVar("T")


def page_runs(items: Iterable[T], limit: int, joins: Callable[[T, T], bool] = lambda a, b: True) -> list[list[T]]:
    """Split ``items`` (pages, or their indices) into runs of consecutive items, each at most ``limit``
    long; a run also ends wherever ``joins(previous, item)`` is False. How every stage batches pages."""
    runs: list[list[T]] = []
    for item in items:
        if runs and len(runs[-1]) < limit and joins(runs[-1][-1], item):
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def choose_batch_size(pages: int, device: str | torch.device, per_page_bytes: int,
                      free_bytes: int | None = None, cuda_max_batch: int = CUDA_MAX_BATCH) -> int:
    """Pages per batch: up to ``CPU_MAX_BATCH`` on a CPU; on CUDA up to ``cuda_max_batch``, as many as
    fit in ``MEMORY_BUDGET_FRACTION`` of the free memory (``free_bytes``, else asked from the driver)."""
    if pages < 0 or per_page_bytes <= 0:
        raise InputError(f"cannot size a batch of {pages} pages at {per_page_bytes} bytes each")
    if pages == 0:
        return 1
    device = torch.device(device)
    if device.type != "cuda":
        return min(pages, CPU_MAX_BATCH)
    free = free_bytes if free_bytes is not None else free_device_memory(device)
    fits = math.floor(MEMORY_BUDGET_FRACTION * max(free, 0) / per_page_bytes)
    return max(1, min(pages, cuda_max_batch, fits))


def choose_offload(free_bytes: int | None, model_bytes: Sequence[int], working_bytes: int,
                   requested: str = "auto") -> str:
    """The least intrusive offload mode that fits ``free_bytes`` (None: no budget, e.g. CPU).

    - ``none``: every model resident, plus one page's working memory;
    - ``model``: one model at a time on the device (`Offload`), so the largest plus a page;
    - ``sequential``: layer by layer, for anything smaller.
    ``requested`` other than ``auto`` forces that mode.
    """
    if requested not in ("auto",) + OFFLOAD_MODES:
        raise InputError(f"unknown offload mode {requested!r}: use auto, {', '.join(OFFLOAD_MODES)}")
    if requested != "auto":
        return requested
    if any(b < 0 for b in model_bytes) or working_bytes < 0:
        raise InputError("model and working memory sizes must not be negative")
    if free_bytes is None:
        return "none"
    if free_bytes >= sum(model_bytes) + working_bytes:
        return "none"
    if free_bytes >= max(model_bytes, default=0) + working_bytes:
        return "model"
    return "sequential"


class Offload:
    """Offload hooks (accelerate) installed on a group of models; ``remove()`` takes them off.

    ``model``: exactly one model of the group sits on the execution device; calling one (its forward,
    or `AutoencoderKL.encode/decode`, which diffusers routes through the same hook) first moves the
    others back to the CPU. accelerate's own chain (`cpu_offload_with_hook`) would keep the UNet and
    the guider, which alternate every step, both resident. ``sequential``: each layer's weights
    are moved in for its own forward only (accelerate's `cpu_offload`), the smallest footprint.
    """

    def __init__(self, models: Sequence[nn.Module], mode: str, device: str | torch.device) -> None:
        if mode not in OFFLOAD_MODES:
            raise InputError(f"unknown offload mode {mode!r}: use {', '.join(OFFLOAD_MODES)}")
        self.models, self.mode, self.device = list(models), mode, _indexed(torch.device(device))
        if mode == "none":
            for model in self.models:
                model.to(self.device)
            return
        accelerate = _accelerate()
        if mode == "sequential":
            for model in self.models:
                accelerate.cpu_offload(model, execution_device=self.device)
            return
        from accelerate.hooks import add_hook_to_module

        hook_class = _group_offload_class()
        for model in self.models:
            model.to("cpu")
            add_hook_to_module(model, hook_class(self.device, self.models), append=True)

    def reserve_bytes(self) -> int:
        """Device memory to keep free for the group's weights when sizing batches: in ``model`` mode
        free memory is read while the next model may still be on the CPU, so keep the largest."""
        if self.mode != "model":
            return 0
        return max((module_bytes(m) for m in self.models), default=0)

    def free_bytes(self) -> int | None:
        """Free device memory for batches, less `reserve_bytes`; None for devices without a budget."""
        free = free_device_memory(self.device)
        return None if free is None else max(free - self.reserve_bytes(), 0)

    def remove(self) -> None:
        """Take the hooks off; the weights end on the CPU (``sequential`` restores them from its map)."""
        if self.mode == "none":
            return
        from accelerate.hooks import remove_hook_from_module

        for model in self.models:
            remove_hook_from_module(model, recurse=True)
            model.to("cpu")


def _indexed(device: torch.device) -> torch.device:
    """``cuda`` → ``cuda:<current>``: parameters report an index, and device equality needs one."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _accelerate():
    try:
        import accelerate
    except ImportError as exc:
        raise ColorFlowError("offloading needs the 'accelerate' package: pip install accelerate") from exc
    return accelerate


def _group_offload_class() -> type:
    """accelerate's `CpuOffload` that first sends the rest of its group back to the CPU."""
    from accelerate.hooks import CpuOffload
    from accelerate.utils import send_to_device

    class GroupCpuOffload(CpuOffload):
        def __init__(self, execution_device: torch.device, group: Sequence[nn.Module]) -> None:
            super().__init__(execution_device=execution_device)
            self.group = group

        def pre_forward(self, module: nn.Module, *args, **kwargs):
            # The move itself is done here, not by CpuOffload.pre_forward: older accelerate (0.30) moves
            # a module even when it is already on the device; skipping that here gives the same moves with all.
            for other in self.group:
                if other is not module and next(other.parameters()).device == self.execution_device:
                    other.to("cpu")
            if next(module.parameters()).device != self.execution_device:
                module.to(self.execution_device)
            return send_to_device(args, self.execution_device), send_to_device(kwargs, self.execution_device)

    return GroupCpuOffload


def use_sdpa(*models: nn.Module) -> int:
    """Switch every diffusers attention still on the classic (materialised softmax) processor to
    torch's scaled_dot_product_attention; returns how many were switched. Special processors
    (IP-Adapter, ...) are left alone."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    switched = 0
    for model in models:
        for module in model.modules():
            if isinstance(module, Attention) and type(module.processor) is AttnProcessor:
                module.set_processor(AttnProcessor2_0())
                switched += 1
    return switched


def to_channels_last(*models: nn.Module) -> None:
    """4-D weights in NHWC order: faster cuDNN convolutions on tensor cores, same results."""
    for model in models:
        model.to(memory_format=torch.channels_last)


def compile_blocks(model: nn.Module, block_names: Iterable[str] = COMPILE_BLOCKS, **compile_kwargs) -> int:
    """Regional ``torch.compile`` of the repeated blocks of ``model``; returns how many.

    Each block's ``forward`` is compiled, not its ``__call__``: the guider residuals / PixArt controls
    are added by hooks installed anew every step (injection.py, pixart.py), and hooks then stay
    outside the compiled code instead of forcing a recompile per step. Same-shaped blocks share
    their compiled graphs, so compile time is seconds, not minutes.
    """
    names = set(block_names)
    count = 0
    for module in model.modules():
        if type(module).__name__ in names:
            module.forward = torch.compile(module.forward, **compile_kwargs)
            count += 1
    return count


def release_memory(device: str | torch.device) -> None:
    """Return cached blocks to the driver between stages (CUDA) after dropping dead Python objects."""
    gc.collect()
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()


@dataclass(frozen=True)
class SpeedOptions:
    """What `configure` may do; the defaults are the product's."""

    offload: str = "auto"               # auto (from free memory) | none | model | sequential
    channels_last: bool | None = None   # None: on CUDA only (cuDNN gains; CPU kernels vary)
    compile: bool = False               # regional torch.compile (first pages pay the compile time)


def configure(models: Sequence[nn.Module], device: str | torch.device, page_bytes: int,
              options: SpeedOptions = SpeedOptions(), free_bytes: int | None = None) -> Offload:
    """Apply the speed settings to the big nets of a loaded style and place them on ``device``.

    ``models`` (already in their dtypes) in the order a page uses them, e.g. image encoder, VAE,
    guider, UNet; ``page_bytes`` is one page's working memory (`page_working_bytes`). The offload
    mode comes from the device's free memory (``free_bytes``, else asked from the driver) plus what
    these models already occupy there, so it is the same whether they were loaded on the CPU or not.
    """
    device = _indexed(resolve_device(device))
    use_sdpa(*models)
    if options.channels_last if options.channels_last is not None else device.type == "cuda":
        to_channels_last(*models)
    free = free_bytes if free_bytes is not None else free_device_memory(device)
    if free is not None:
        free += sum(module_bytes(m) for m in models if _indexed(_device_of(m)) == device)
    mode = choose_offload(free, [module_bytes(m) for m in models], page_bytes, options.offload)
    if options.compile and mode != "none":
        raise InputError(f"torch.compile needs the models resident on the device, but offload is {mode!r}")
    offload = Offload(models, mode, device)
    if options.compile:
        for model in models:
            compile_blocks(model)
    return offload


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device
