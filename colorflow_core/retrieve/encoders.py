"""Image encoders that turn patches into embedding vectors for retrieval.

`CLIPImageEncoder` is the original's: the release's `image_encoder/` (a transformers
`CLIPVisionModelWithProjection`) fed by `CLIPImageProcessor()` with its constructor defaults on the
PIL backend. transformers 5 builds `CLIPImageProcessor` on torchvision, whose resampling numerics
differ, so the PIL steps are done here directly (`clip_preprocess`); that also keeps the numbers
independent of the installed transformers version. `OpenCLIPImageEncoder` lets users try any
open_clip model instead. Retrieval only needs cosine similarities, so embeddings are not normalised.
"""
from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..errors import InputError, WeightsError
from ..options import parse_encoder

# CLIPImageProcessor() defaults (OpenAI CLIP preprocessing).
CLIP_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@runtime_checkable
class ImageEncoder(Protocol):
    """What retrieval needs from an encoder."""

    @property
    def identity(self) -> str:
        """Changes whenever the embeddings would: cache key of saved reference pools."""
        ...

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Embed images → float32 tensor (N, d) on the CPU."""
        ...

    def to(self, device: str | torch.device) -> "ImageEncoder":
        ...


def clip_preprocess(img: Image.Image) -> np.ndarray:
    """One image → (3, 224, 224) float32 exactly as `CLIPImageProcessor()` (PIL backend) does it.

    Shortest edge to 224 (the long edge truncated: int(224 * long / short)) with PIL bicubic on
    uint8, centre crop 224 (offset (size - 224) // 2), rescale by 1/255, OpenAI mean/std.
    """
    img = img.convert("RGB")
    width, height = img.size
    if width <= height:
        new_size = (CLIP_SIZE, int(CLIP_SIZE * height / width))
    else:
        new_size = (int(CLIP_SIZE * width / height), CLIP_SIZE)
    img = img.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (new_size[0] - CLIP_SIZE) // 2, (new_size[1] - CLIP_SIZE) // 2
    pixels = np.asarray(img.crop((left, top, left + CLIP_SIZE, top + CLIP_SIZE)), dtype=np.float32)
    pixels = (pixels * np.float32(1 / 255) - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    return pixels.transpose(2, 0, 1)


def module_digest(module: nn.Module) -> str:
    """sha256 over a module's parameters and buffers (names, dtypes, shapes, values).

    Used as the encoder identity so that a cached pool is reused only with the very same weights
    in the very same dtype, wherever the files live.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class _TorchEncoder(ABC):
    """Shared batching / device / identity logic of the concrete encoders."""

    kind = "encoder"

    def __init__(
        self,
        model: nn.Module,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> None:
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval().to(device=device, dtype=dtype)
        self.device = torch.device(device)
        self.dtype = dtype
        self.batch_size = batch_size
        self._identity: str | None = None

    @property
    def identity(self) -> str:
        if self._identity is None:  # hashing the weights costs a moment: only when a cache asks
            self._identity = f"{self.kind}:{module_digest(self.model)}"
        return self._identity

    def to(self, device: str | torch.device) -> "_TorchEncoder":
        self.model.to(device)
        self.device = torch.device(device)
        return self

    @abstractmethod
    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """The model's preprocessing: images → (B, 3, h, w) float32."""

    @abstractmethod
    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels → (B, d) embeddings."""

    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """Embed in batches of at most ``batch_size`` → float32 (N, d) on the CPU."""
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self._pixels(images[start:start + self.batch_size])
                out = self._forward(pixels.to(device=self.device, dtype=self.dtype))
                chunks.append(out.to("cpu", torch.float32))
        if not chunks:
            raise InputError("no images to embed")
        return torch.cat(chunks)


class CLIPImageEncoder(_TorchEncoder):
    """The release's CLIP vision tower with projection; ``image_embeds`` are the embeddings."""

    kind = "clip-vision"

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> "CLIPImageEncoder":
        """Load a `CLIPVisionModelWithProjection` folder (config.json + weights), e.g. ``image_encoder/``."""
        from transformers import CLIPVisionModelWithProjection

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise WeightsError(
                f"{folder} is not a CLIP image encoder folder (no config.json); it is the release's "
                f"image_encoder/ folder"
            )
        try:
            model = CLIPVisionModelWithProjection.from_pretrained(str(folder), torch_dtype=dtype)
        except Exception as exc:  # missing/corrupt weights, wrong architecture
            raise WeightsError(f"could not load the CLIP image encoder from {folder}: {exc}") from exc
        return cls(model, device=device, dtype=dtype, batch_size=batch_size)

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.from_numpy(np.stack([clip_preprocess(img) for img in images]))

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixels).image_embeds


class OpenCLIPImageEncoder(_TorchEncoder):
    """Any open_clip model as the retrieval encoder, with that model's own preprocessing.

    ``pretrained`` is an open_clip pretrained tag or a checkpoint path; None keeps random weights
    (useful only for tests).
    """

    kind = "open-clip"

    def __init__(
        self,
        model_name: str,
        pretrained: str | os.PathLike | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = 32,
    ) -> None:
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=str(pretrained) if pretrained is not None else None, device="cpu"
            )
        except Exception as exc:  # unknown name, missing/corrupt checkpoint, no network for a tag
            raise WeightsError(f"could not create open_clip model {model_name!r} ({pretrained}): {exc}") from exc
        self.model_name = model_name
        self.preprocess = preprocess
        super().__init__(model, device=device, dtype=dtype, batch_size=batch_size)
        self.kind = f"open-clip[{model_name}]"

    def _pixels(self, images: Sequence[Image.Image]) -> torch.Tensor:
        return torch.stack([self.preprocess(img.convert("RGB")) for img in images])

    def _forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


def load_encoder(spec: str, release_encoder: Path, device: str | torch.device = "cpu") -> ImageEncoder:
    """The retrieval encoder named by ``spec`` (`parse_encoder`); ``release_encoder`` is the
    release's `image_encoder/` folder, used by ``clip``. Embeddings stay fp32 (scores are compared
    across pages)."""
    model, weights = parse_encoder(spec)
    if model == "clip":
        return CLIPImageEncoder.from_pretrained(release_encoder, device=device)
    return OpenCLIPImageEncoder(model, pretrained=weights, device=device)
