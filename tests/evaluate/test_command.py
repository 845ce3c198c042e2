"""``evaluate`` end to end (colorflow_core.evaluate.command.main): pairing, report, JSON, exit codes."""
from __future__ import annotations

import json

import pytest
from PIL import Image

from colorflow_core.evaluate.command import main
from tests.evaluate.support import random_pages, write_pages


def last_line(text: str) -> str:
    return text.strip().splitlines()[-1]


def test_identical_sets_all_metrics(tmp_path, tiny_features, encoder_release, capsys):
    pages = dict(zip(("p1", "p2", "p10"), random_pages(3)))
    pred, gt = write_pages(tmp_path / "pred", pages), write_pages(tmp_path / "gt", pages, ".bmp")  # lossless both
    out = tmp_path / "report.json"
    code = main([str(pred), str(gt), "--release", str(encoder_release), "--metrics", "psnr,ssim,fid,clip",
                 "--json", str(out)], fid_feature=tiny_features)
    table = capsys.readouterr().out
    assert code == 0
    report = json.loads(out.read_text())
    assert report["pages"] == {"paired": ["p1", "p2", "p10"], "evaluated": ["p1", "p2", "p10"]}
    assert report["problems"] == []
    found = report["metrics"]
    assert found["psnr"]["value"] == "inf" and found["psnr"]["pages"] == {"p1": "inf", "p2": "inf", "p10": "inf"}
    assert found["ssim"]["value"] == pytest.approx(1.0)
    assert found["fid"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert found["clip"]["value"] == pytest.approx(1.0, abs=1e-6)
    assert "PSNR (dB)" in table and "inf" in table and "CLIP-IS" in table


def test_mismatched_sets_are_named_and_the_rest_evaluated(tmp_path, capsys):
    a, b, c, d, e = random_pages(5)
    pred = write_pages(tmp_path / "pred", {"p1": a, "p2": b.resize((96, 144)), "p3": c, "p6": e})
    gt = write_pages(tmp_path / "gt", {"p1": a, "p2": b, "p4": d, "p6": e})
    (pred / "p4.png").write_bytes(b"not an image")
    e.save(pred / "p6.jpg")  # two predictions named p6
    out = tmp_path / "report.json"
    assert main([str(pred), str(gt), "--metrics", "psnr,ssim", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    kinds = {p["page"]: p["kind"] for p in report["problems"]}
    assert kinds == {"p2": "size-mismatch", "p3": "no-ground-truth", "p4": "unreadable", "p6": "duplicate-stem"}
    assert report["pages"]["evaluated"] == ["p1"]
    size_message = next(p["message"] for p in report["problems"] if p["page"] == "p2")
    assert "96x144" in size_message and "64x96" in size_message and "--resize-to-gt" in size_message
    for stem in ("p2", "p3", "p4", "p6"):
        assert f"{stem}:" in table
    # with --resize-to-gt the 1.5x prediction is resized (bicubic) and evaluated, and that is said
    assert main([str(pred), str(gt), "--metrics", "psnr", "--resize-to-gt", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["pages"]["evaluated"] == ["p1", "p2"]
    assert {p["page"]: p["kind"] for p in report["problems"]}["p2"] == "resized"
    assert 25 < report["metrics"]["psnr"]["pages"]["p2"] < 100  # smooth page: bicubic down and up is close


def test_ground_truth_without_prediction_is_named(tmp_path, capsys):
    a, b = random_pages(2)
    pred, gt = write_pages(tmp_path / "pred", {"p1": a}), write_pages(tmp_path / "gt", {"p1": a, "p2": b})
    assert main([str(pred), str(gt), "--metrics", "ssim"]) == 0
    assert "no-prediction: p2: ground truth p2.png has no prediction" in capsys.readouterr().out


def test_unavailable_metrics_are_reported_with_reason_and_exit_0(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))  # no cached Inception weights
    pages = dict(zip(("p1", "p2"), random_pages(2)))
    pred, gt = write_pages(tmp_path / "pred", pages), write_pages(tmp_path / "gt", pages)
    (tmp_path / "empty_release").mkdir()
    out = tmp_path / "report.json"
    code = main([str(pred), str(gt), "--release", str(tmp_path / "empty_release"), "--json", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    found = json.loads(out.read_text())["metrics"]
    assert found["psnr"]["status"] == "ok" and found["ssim"]["status"] == "ok"
    assert found["fid"]["status"] == "unavailable" and "--fid-weights" in found["fid"]["reason"]
    assert found["clip"]["status"] == "unavailable" and "image_encoder" in found["clip"]["reason"]
    assert found["consistency"]["status"] == "unavailable" and "--refs" in found["consistency"]["reason"]
    assert "unavailable" in captured.out


def test_consistency_through_the_command(tmp_path, capsys):
    img = Image.new("RGB", (96, 144), (200, 40, 40))
    pred = write_pages(tmp_path / "pred", {"p1": img, "p2": img})
    gt = write_pages(tmp_path / "gt", {"p1": img, "p2": img})
    refs = write_pages(tmp_path / "refs", {"hero": Image.new("RGB", (64, 96), (200, 40, 40))})
    record = {"format": "colorflow-retrieval/1", "page": "p1", "size": [64, 96], "top_k": 1,
              "cells": [{"query_patch": 0, "query_box": [0, 0, 48, 72], "rank": 0, "cell": [1, 0],
                         "reference": "hero.png", "reference_index": 0, "patch": "whole",
                         "patch_box": [0, 0, 64, 96], "similarity": 0.9}]}
    (pred / "retrieval").mkdir()
    (pred / "retrieval" / "p1.json").write_text(json.dumps(record))  # p2 has none
    out = tmp_path / "report.json"
    assert main([str(pred), str(gt), "--metrics", "consistency", "--refs", str(refs), "--json", str(out)]) == 0
    result = json.loads(out.read_text())["metrics"]["consistency"]
    assert result["pages"] == {"p1": pytest.approx(0.0, abs=1e-6)}
    assert "p2" in result["skipped"] and "no retrieval record" in result["skipped"]["p2"]
    assert "skipped p2" in capsys.readouterr().out


def test_metric_failing_on_the_data_exits_1(tmp_path, tiny_features, capsys):
    pages = {"p1": random_pages(1)[0]}
    pred, gt = write_pages(tmp_path / "pred", pages), write_pages(tmp_path / "gt", pages)
    assert main([str(pred), str(gt), "--metrics", "psnr,fid"], fid_feature=tiny_features) == 1
    captured = capsys.readouterr()
    assert "at least 2 pages" in captured.out
    assert last_line(captured.err) == "error: fid failed on these pages (see above)"


def test_unknown_metric_exits_2_with_one_error_line(tmp_path, capsys):
    pages = {"p1": random_pages(1)[0]}
    pred, gt = write_pages(tmp_path / "pred", pages), write_pages(tmp_path / "gt", pages)
    with pytest.raises(SystemExit) as exit_info:
        main([str(pred), str(gt), "--metrics", "psnr,sharpness"])
    assert exit_info.value.code == 2
    error = last_line(capsys.readouterr().err)
    assert error.startswith("error: argument --metrics: unknown metric 'sharpness'") and "psnr,ssim" in error


@pytest.mark.parametrize("case", ["missing", "empty", "no-common", "refs-missing", "consistency-without-refs"])
def test_unusable_arguments_exit_2(tmp_path, capsys, case):
    pages = {"p1": random_pages(1)[0]}
    pred, gt = write_pages(tmp_path / "pred", pages), write_pages(tmp_path / "gt", pages)
    extra = []
    if case == "missing":
        gt = tmp_path / "nowhere"
    elif case == "empty":
        gt = tmp_path / "empty"
        gt.mkdir()
    elif case == "no-common":
        gt = write_pages(tmp_path / "gt2", {"q1": pages["p1"]})
    elif case == "refs-missing":
        extra = ["--refs", str(tmp_path / "norefs")]
    else:
        extra = ["--metrics", "consistency"]
    assert main([str(pred), str(gt), *extra]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: ")
    expected = {"missing": "GT_DIR", "empty": "holds no image files", "no-common": "no page of",
                "refs-missing": "--refs", "consistency-without-refs": "needs --refs"}[case]
    assert expected in error[0]
