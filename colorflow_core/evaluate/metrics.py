"""PSNR, SSIM, FID and CLIP image similarity over paired lists of RGB pages (ColorFlow-Bench).

Each metric is a small function over lists of PIL images; the heavy libraries are imported inside
them. A metric whose library or weights cannot be had raises `MetricUnavailable` with the reason
(the command reports it and runs the others); nothing here downloads anything unless asked.

- PSNR: scikit-image, on 8-bit RGB (data range 255), per page; identical pages give infinity.
- SSIM: scikit-image with the settings of Wang et al. 2004 (Gaussian window, sigma 1.5, population
  covariances), on the three channels, averaged.
- FID: torchmetrics' `FrechetInceptionDistance` over the pages' features; the standard Inception
  network comes from torch-fidelity (the weights FID is defined with), loaded from ``--fid-weights``
  or torch's hub cache, downloaded only with ``--download``. Tests inject any feature module.
- CLIP-IS: cosine similarity of CLIP image embeddings of prediction and ground truth, per page: the
  release's ``image_encoder/`` (as retrieval uses it) or an open_clip model.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

FID_MIN_PAGES = 2  # a covariance needs two samples per set


class MetricUnavailable(Exception):
    """The metric's library or weights cannot be had here; the message says what is missing and how to get it."""


def _arrays(images: Sequence[Image.Image]) -> list[np.ndarray]:
    return [np.asarray(img.convert("RGB"), dtype=np.uint8) for img in images]


def _skimage_metrics() -> Any:
    try:
        from skimage import metrics
    except ImportError as exc:
        raise MetricUnavailable(f"scikit-image is not installed (pip install scikit-image): {exc}") from exc
    return metrics


def _check_pairs(preds: Sequence[Image.Image], gts: Sequence[Image.Image]) -> None:
    if len(preds) != len(gts) or not preds:
        raise ValueError(f"needs the same positive number of predictions and ground truths, got {len(preds)} "
                         f"and {len(gts)}")
    for k, (p, g) in enumerate(zip(preds, gts)):
        if p.size != g.size:
            raise ValueError(f"pair {k}: prediction {p.size} and ground truth {g.size} differ in size")


def psnr(preds: Sequence[Image.Image], gts: Sequence[Image.Image]) -> list[float]:
    """Per-page PSNR in dB over all pixels and channels of 8-bit RGB; ``inf`` for identical pages."""
    _check_pairs(preds, gts)
    metrics = _skimage_metrics()
    out = []
    for p, g in zip(_arrays(preds), _arrays(gts)):
        with np.errstate(divide="ignore"):  # identical pages: MSE 0 -> inf, on purpose
            out.append(float(metrics.peak_signal_noise_ratio(g, p, data_range=255)))
    return out


def ssim(preds: Sequence[Image.Image], gts: Sequence[Image.Image]) -> list[float]:
    """Per-page SSIM of 8-bit RGB (Gaussian window sigma 1.5, as Wang et al.), mean over channels."""
    _check_pairs(preds, gts)
    metrics = _skimage_metrics()
    return [float(metrics.structural_similarity(g, p, data_range=255, channel_axis=-1, gaussian_weights=True,
                                                sigma=1.5, use_sample_covariance=False))
            for p, g in zip(_arrays(preds), _arrays(gts))]


# ---- FID ----------------------------------------------------------------------------------------------------

def inception_weights_path() -> Path:
    """Where torch-fidelity keeps (and looks for) its Inception weights: torch's hub cache."""
    import torch
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    return Path(torch.hub.get_dir()) / "checkpoints" / URL_INCEPTION_V3.rsplit("/", 1)[1]


def inception_extractor(weights: str | os.PathLike | None = None, download: bool = False) -> Any:
    """The standard FID Inception-v3 (torch-fidelity's port of the TF graph) → 2048 pool features.

    ``weights``: the weights file; None looks in torch's hub cache and, only with ``download``,
    fetches it there (about 95 MB). Raises MetricUnavailable when the library or the file is missing.
    The file is opened with ``weights_only=True`` first, so a pickle that needs code is refused.
    """
    try:
        import torch
        from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3
    except ImportError as exc:
        raise MetricUnavailable(f"torch-fidelity is not installed (pip install torch-fidelity; it holds the "
                                f"Inception network FID is defined with): {exc}") from exc
    from ..errors import WeightsError
    from ..weights import load_state_dict_file

    if weights is None:
        path = inception_weights_path()
        if not path.is_file():
            if not download:
                raise MetricUnavailable(f"the Inception weights are not in the cache ({path}); pass --fid-weights "
                                        f"FILE ({path.name}, from {URL_INCEPTION_V3}) or --download to fetch them "
                                        f"(about 95 MB)")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=True)
            except Exception as exc:  # offline, proxy, disk full: FID is unavailable, the rest still runs
                raise MetricUnavailable(f"could not download the Inception weights from {URL_INCEPTION_V3}: "
                                        f"{type(exc).__name__}: {exc}") from exc
        weights = path
    try:
        load_state_dict_file(weights)  # refuses a truncated file or a pickle that needs Python code
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(weights))
    except (WeightsError, RuntimeError, OSError) as exc:
        raise MetricUnavailable(f"the Inception weights {weights} cannot be used: {exc}") from exc
    return pool_features(net)


def pool_features(net: Any) -> Any:
    """Wrap torch-fidelity's extractor (a tuple per feature layer) → the (N, 2048) pool features."""
    from torch import nn

    class PoolFeatures(nn.Module):
        """torch-fidelity's extractor returns a tuple per feature layer: keep the 2048-d pool features."""

        num_features = 2048

        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net.eval()

        def forward(self, x: Any) -> Any:
            return self.net(x)[0].reshape(x.shape[0], -1)

    return PoolFeatures(net)


def fid(preds: Sequence[Image.Image], gts: Sequence[Image.Image], feature: Any, device: str = "cpu") -> float:
    """FID between the predicted and ground-truth pages, with ``feature`` (an nn.Module taking uint8
    (N, 3, H, W) and returning (N, d)) as the feature extractor. Needs at least 2 pages per set; the
    sets need not be paired or of one size (each page is fed alone)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance

    if len(preds) < FID_MIN_PAGES or len(gts) < FID_MIN_PAGES:
        raise ValueError(f"FID needs at least {FID_MIN_PAGES} pages in each set, got {len(preds)} predictions and "
                         f"{len(gts)} ground truths")
    metric = FrechetInceptionDistance(feature=feature, reset_real_features=True).to(device)
    with torch.inference_mode():
        for images, real in ((gts, True), (preds, False)):
            for array in _arrays(images):
                pixels = torch.from_numpy(array.copy()).permute(2, 0, 1).unsqueeze(0).to(device)
                metric.update(pixels, real=real)
        return float(metric.compute())


# ---- CLIP image similarity ----------------------------------------------------------------------------------

def clip_encoder(release: str | os.PathLike | None = None, clip_model: str | None = None,
                 clip_pretrained: str | os.PathLike | None = None, device: str = "cpu") -> Any:
    """The encoder for CLIP-IS: open_clip ``clip_model`` with ``clip_pretrained`` when given, else the
    release's ``image_encoder/`` (``release``, else $COLORFLOW_MODELS, else the hub cache; never a
    download). MetricUnavailable with the reason when it cannot be loaded."""
    from ..errors import WeightsError

    from ..retrieve import encoders

    if clip_model is not None:
        try:
            return encoders.OpenCLIPImageEncoder(clip_model, clip_pretrained, device=device)
        except ImportError as exc:
            raise MetricUnavailable(f"open_clip is not installed (pip install open_clip_torch): {exc}") from exc
        except WeightsError as exc:
            raise MetricUnavailable(str(exc)) from exc
    from ..release.paths import find_release

    try:
        root = find_release(release, allow_download=False, progress=False)
        return encoders.CLIPImageEncoder.from_pretrained(Path(root) / "image_encoder", device=device)
    except (WeightsError, ImportError) as exc:
        raise MetricUnavailable(f"no CLIP image encoder (give --release DIR, the release folder holding "
                                f"image_encoder/, or --clip-model NAME --clip-pretrained FILE): {exc}") from exc


def clip_similarity(preds: Sequence[Image.Image], gts: Sequence[Image.Image], encoder: Any) -> list[float]:
    """Per page, the cosine similarity of the embeddings of prediction and ground truth (1 = identical)."""
    import torch.nn.functional as F

    if len(preds) != len(gts) or not preds:
        raise ValueError(f"needs the same positive number of predictions and ground truths, got {len(preds)} "
                         f"and {len(gts)}")
    a, b = encoder.embed(list(preds)).double(), encoder.embed(list(gts)).double()
    return [float(v) for v in F.cosine_similarity(a, b, dim=-1)]
