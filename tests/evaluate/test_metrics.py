"""Known answers of PSNR, SSIM, FID and CLIP-IS (colorflow_core.evaluate.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from tests.evaluate.support import PAGE_H, PAGE_W, MeanColour, random_pages
from PIL import Image

from colorflow_core.evaluate import metrics


def test_identical_pages_give_the_perfect_scores(tiny_features, encoder_release):
    pages = random_pages(3)
    copies = [p.copy() for p in pages]
    assert metrics.psnr(copies, pages) == [math.inf] * 3
    assert metrics.ssim(copies, pages) == pytest.approx([1.0] * 3, abs=1e-12)
    assert metrics.fid(copies, pages, tiny_features) == pytest.approx(0.0, abs=1e-4)
    encoder = metrics.clip_encoder(encoder_release)
    assert metrics.clip_similarity(copies, pages, encoder) == pytest.approx([1.0] * 3, abs=1e-6)


def test_different_pages_score_worse(tiny_features, encoder_release):
    pages, others = random_pages(3, seed=0), random_pages(3, seed=1)
    assert max(metrics.psnr(others, pages)) < 20
    assert max(metrics.ssim(others, pages)) < 0.9
    assert metrics.fid(others, pages, tiny_features) > 1e-3
    encoder = metrics.clip_encoder(encoder_release)
    assert max(metrics.clip_similarity(others, pages, encoder)) < 1 - 1e-4


def test_psnr_of_known_gaussian_noise():
    """Mid-gray pages plus N(0, sigma^2) noise, rounded to 8 bit: PSNR = 20 log10(255 / sigma).

    Tolerance: rounding adds variance 1/12, so the MSE is sigma^2 + 1/12 (+0.004 dB at sigma 10); the MSE of
    n = 64*96*3 samples has a relative standard deviation sqrt(2/n) = 1.0 %, i.e. 0.045 dB per page and 0.026 dB
    for the mean of 3 pages. At 128 +- 5 sigma no value is clipped. 0.1 dB is about 4 standard deviations.
    """
    sigma, rng = 10.0, np.random.default_rng(3)
    gray = np.full((PAGE_H, PAGE_W, 3), 128.0)
    truth = [Image.fromarray(gray.astype(np.uint8))] * 3
    noisy = [Image.fromarray(np.clip(np.rint(gray + rng.normal(0, sigma, gray.shape)), 0, 255).astype(np.uint8))
             for _ in range(3)]
    expected = 20 * math.log10(255 / sigma)
    assert float(np.mean(metrics.psnr(noisy, truth))) == pytest.approx(expected, abs=0.1)
    assert max(metrics.ssim(noisy, truth)) < 0.9


def test_fid_closed_form_with_mean_colour_features():
    """With features = the channel means, shifting every page by +c (no clipping) moves the feature mean by c in
    each of 3 dimensions and keeps the covariance: FID = 3 c^2 exactly."""
    rng = np.random.default_rng(5)
    base = [rng.integers(60, 190, (PAGE_H, PAGE_W, 3)).astype(np.int16) for _ in range(4)]
    truth = [Image.fromarray(b.astype(np.uint8)) for b in base]
    shifted = [Image.fromarray((b + 10).astype(np.uint8)) for b in base]
    assert metrics.fid(shifted, truth, MeanColour()) == pytest.approx(300.0, rel=1e-6)


def test_fid_needs_two_pages(tiny_features):
    page = random_pages(1)
    with pytest.raises(ValueError, match="at least 2 pages"):
        metrics.fid(page, page, tiny_features)


def test_fid_without_weights_is_unavailable(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(metrics.MetricUnavailable, match="--fid-weights FILE .* or --download"):
        metrics.inception_extractor()
    truncated = tmp_path / "inception.pth"
    truncated.write_bytes(b"not a checkpoint")
    with pytest.raises(metrics.MetricUnavailable, match="cannot be used"):
        metrics.inception_extractor(truncated)


def test_clip_without_encoder_is_unavailable(tmp_path):
    with pytest.raises(metrics.MetricUnavailable, match="image_encoder"):
        metrics.clip_encoder(tmp_path)  # a folder without image_encoder/


@pytest.mark.slow  # a few seconds: torch-fidelity's import and one 299 x 299 Inception pass
def test_inception_extractor_from_a_weights_file(tmp_path):
    """The real FID path on a random-weight file in torch-fidelity's layout: checked with weights_only, built by
    torch-fidelity, wrapped to (N, 2048) pool features. (No FID here: a 2048-d matrix root takes ~40 s on 2 CPUs.)"""
    from unittest import mock

    import torch
    import torch_fidelity.feature_extractor_inceptionv3 as tf_inception

    Net = tf_inception.FeatureExtractorInceptionV3
    with mock.patch.object(tf_inception, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(Net, "load_state_dict", lambda *a, **k: None):
        random_net = Net("inception-v3-compat", ["2048"])
    weights = tmp_path / "inception.pth"
    torch.save(random_net.state_dict(), weights)
    extractor = metrics.inception_extractor(weights)
    pixels = torch.from_numpy(np.asarray(random_pages(1)[0]).copy()).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        features = extractor(pixels)
    assert features.shape == (1, 2048) and torch.isfinite(features).all()
