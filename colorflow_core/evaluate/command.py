"""``python -m colorflow_core evaluate PRED_DIR GT_DIR [--metrics ...] [--json OUT.json]``.

Pages are paired by file stem (`pairing`); PSNR, SSIM, FID and CLIP-IS are computed over the pairs
that could be read and have one size (or were resized with ``--resize-to-gt``), the consistency
score over every readable prediction that has a retrieval record. Results go to stdout as a table,
and with ``--json`` to a file. Every page left out of a metric is named with the reason.

Exit status: 0 when every requested metric was computed or is *unavailable* (its library or weights
cannot be had here: reported with the reason); 1 when a requested metric *failed* on the data (e.g. no
usable pair, fewer than 2 pages for FID, no page with a usable retrieval record); 2 with one
``error: ...`` line for unusable arguments (a folder missing or without images, no page in common,
an unknown metric).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn, Sequence

from ..errors import ColorFlowError, InputError

METRICS = ("psnr", "ssim", "fid", "clip", "consistency")
LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "fid": "FID", "clip": "CLIP-IS", "consistency": "consistency (ΔE00)"}
BETTER = {"psnr": "higher", "ssim": "higher", "fid": "lower", "clip": "higher", "consistency": "lower"}
REPORT_FORMAT = "colorflow-evaluate/1"
RETRIEVAL_DIR = "retrieval"  # default record folder under PRED_DIR
EXIT_ERROR = 2  # = cli.EXIT_ERROR (cli imports this module: no import back)
EXIT_METRIC_FAILED = 1


def _metric_list(text: str) -> list[str]:
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown metric {', '.join(map(repr, unknown)) or repr(text)}; choose "
                                         f"from {','.join(METRICS)} (comma-separated)")
    return list(dict.fromkeys(names))


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``evaluate`` subcommand to the CLI's subparsers; its handler is ``evaluate_command``."""
    p = subparsers.add_parser(
        "evaluate", help="score coloured pages against ground truth (PSNR, SSIM, FID, CLIP-IS, consistency)",
        description="Score the coloured pages of PRED_DIR against the ground truth in GT_DIR, paired by file "
                    "name without extension (p3.png <-> p3.jpg), with the ColorFlow-Bench metrics, plus the "
                    "colour consistency of each page with the references retrieved for it. Pages that cannot "
                    "be paired or used are named; a metric whose weights are not available is reported as "
                    "such and the others still run.")
    p.add_argument("pred_dir", metavar="PRED_DIR", help="folder of coloured pages (e.g. colorize's --out)")
    p.add_argument("gt_dir", metavar="GT_DIR", help="folder of ground-truth colour pages")
    p.add_argument("--metrics", type=_metric_list, default=list(METRICS), metavar="LIST",
                   help=f"comma-separated subset of {','.join(METRICS)} (default: all)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also write the full report (per page) as JSON")
    p.add_argument("--resize-to-gt", action="store_true",
                   help="resize a prediction whose size differs from its ground truth to the ground truth's size "
                        "(bicubic); default: such a page is left out of PSNR/SSIM/FID/CLIP-IS and named")
    p.add_argument("--retrieval", default=None, metavar="DIR",
                   help=f"consistency: folder of the per-page retrieval records <page>.json (default "
                        f"PRED_DIR/{RETRIEVAL_DIR})")
    p.add_argument("--refs", default=None, metavar="DIR", help="consistency: folder of the colour references")
    p.add_argument("--release", default=None, metavar="DIR",
                   help="CLIP-IS: ColorFlow release folder holding image_encoder/ (default: $COLORFLOW_MODELS, "
                        "else the hub cache; never downloaded here)")
    p.add_argument("--clip-model", default=None, metavar="NAME",
                   help="CLIP-IS: use this open_clip model instead of the release's image encoder")
    p.add_argument("--clip-pretrained", default=None, metavar="PATH_OR_TAG",
                   help="CLIP-IS: the open_clip checkpoint file or pretrained tag (with --clip-model)")
    p.add_argument("--fid-weights", default=None, metavar="FILE",
                   help="FID: the Inception weights file (default: torch's hub cache)")
    p.add_argument("--download", action="store_true",
                   help="FID: download the Inception weights (about 95 MB) when they are not in the cache")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where FID and CLIP-IS run (default auto: CUDA when available)")
    p.set_defaults(handler=evaluate_command)
    return p


class _Parser(argparse.ArgumentParser):
    """The CLI's error form (cli._Parser) for `main` alone: usage, then ``error: ...`` last, exit 2."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_ERROR, f"error: {message} (see {self.prog} --help)\n")


def _check_arguments(args: argparse.Namespace) -> None:
    for option, value, kind in (("--refs", args.refs, "dir"), ("--retrieval", args.retrieval, "dir"),
                                ("--release", args.release, "dir"), ("--fid-weights", args.fid_weights, "file")):
        if value is None:
            continue
        path = Path(value)
        if kind == "dir" and not path.is_dir():
            raise InputError(f"{option} {value}: folder not found")
        if kind == "file" and not path.is_file():
            raise InputError(f"{option} {value}: file not found")
    if args.clip_pretrained is not None and args.clip_model is None:
        raise InputError("--clip-pretrained needs --clip-model (the open_clip model name)")
    if args.clip_model is not None and args.clip_pretrained is None:
        raise InputError("--clip-model needs --clip-pretrained (a checkpoint file or tag): random weights measure "
                         "nothing")
    if "consistency" in args.metrics and args.refs is None and args.metrics != list(METRICS):
        raise InputError("the consistency metric needs --refs DIR (the colour references the pages were coloured "
                         "with)")
    if args.json is not None and not Path(args.json).resolve().parent.is_dir():
        raise InputError(f"--json {args.json}: its folder does not exist")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _summary(values: dict[str, float]) -> float:
    return sum(values.values()) / len(values)


def evaluate(args: argparse.Namespace, *, fid_feature: Any = None, clip_encoder: Any = None) -> dict[str, Any]:
    """The report (a JSON-able dict) for parsed arguments. ``fid_feature`` / ``clip_encoder`` replace the
    Inception network / the CLIP encoder (tests inject tiny ones)."""
    from . import metrics as m
    from .consistency import chapter_consistency
    from .pairing import load_pairs, pair_pages

    _check_arguments(args)
    pairing = pair_pages(args.pred_dir, args.gt_dir)
    loaded, load_problems = load_pairs(pairing, resize_to_gt=args.resize_to_gt)
    problems = pairing.problems + load_problems
    stems = [p.stem for p in loaded]
    preds, gts = [p.prediction for p in loaded], [p.ground_truth for p in loaded]
    results: dict[str, dict[str, Any]] = {}
    device = None

    for name in args.metrics:
        try:
            if name in ("psnr", "ssim", "fid", "clip") and not loaded:
                raise ValueError("no usable page pair (see the problems)")
            if name in ("psnr", "ssim"):
                values = dict(zip(stems, (m.psnr if name == "psnr" else m.ssim)(preds, gts)))
                results[name] = {"status": "ok", "value": _summary(values), "pages": values}
            elif name == "fid":
                device = device or _device(args.device)
                feature = fid_feature if fid_feature is not None else m.inception_extractor(args.fid_weights,
                                                                                            args.download)
                results[name] = {"status": "ok", "value": m.fid(preds, gts, feature, device=device),
                                 "page_count": len(loaded)}
            elif name == "clip":
                device = device or _device(args.device)
                encoder = clip_encoder if clip_encoder is not None else m.clip_encoder(
                    args.release, args.clip_model, args.clip_pretrained, device=device)
                values = dict(zip(stems, m.clip_similarity(preds, gts, encoder)))
                results[name] = {"status": "ok", "value": _summary(values), "pages": values}
            else:
                results[name] = _consistency(args, pairing.predictions, chapter_consistency)
        except m.MetricUnavailable as exc:
            results[name] = {"status": "unavailable", "reason": str(exc)}
        except (ValueError, RuntimeError, ColorFlowError) as exc:
            results[name] = {"status": "failed", "reason": str(exc)}
    return {"format": REPORT_FORMAT, "pred_dir": str(args.pred_dir), "gt_dir": str(args.gt_dir),
            "pages": {"paired": [s for s, _, _ in pairing.pairs], "evaluated": stems},
            "problems": [p.to_json() for p in problems], "metrics": results}


def _consistency(args: argparse.Namespace, predictions: dict[str, Path], score: Any) -> dict[str, Any]:
    from .metrics import MetricUnavailable

    if args.refs is None:
        raise MetricUnavailable("needs --refs DIR (the colour references) and the pages' retrieval records")
    retrieval = Path(args.retrieval) if args.retrieval is not None else Path(args.pred_dir) / RETRIEVAL_DIR
    if not retrieval.is_dir():
        raise MetricUnavailable(f"no retrieval records: {retrieval} does not exist (give --retrieval DIR)")
    scores, skipped = score(predictions, retrieval, args.refs)
    if not scores:
        raise ValueError(f"no page has a usable retrieval record in {retrieval}: "
                         + "; ".join(f"{page}: {why}" for page, why in skipped.items()))
    pages = {page: s.delta_e for page, s in scores.items()}
    return {"status": "ok", "value": _summary(pages), "pages": pages, "skipped": skipped,
            "regions": {page: s.regions for page, s in scores.items()},
            "coloured_fraction": {page: s.coloured_fraction for page, s in scores.items()}}


def _json_safe(value: Any) -> Any:
    """JSON has no infinity: PSNR of identical pages is written as the string "inf"."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _format(name: str, value: float) -> str:
    if math.isinf(value):
        return "inf"
    return f"{value:.4f}" if name in ("ssim", "clip") else f"{value:.2f}"


def format_table(report: dict[str, Any]) -> str:
    """The stdout report: one line per metric, then the pages left out and why."""
    rows = [("metric", "value", "pages", "note")]
    for name, result in report["metrics"].items():
        label = LABELS[name]
        if result["status"] == "ok":
            count = result.get("page_count", len(result.get("pages", {})))
            note = f"{BETTER[name]} is better"
            if result.get("skipped"):
                note += f"; {len(result['skipped'])} page(s) skipped: {', '.join(result['skipped'])}"
            rows.append((label, _format(name, result["value"]), str(count), note))
        else:
            rows.append((label, result["status"], "-", result["reason"]))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(3)) + "  " + r[3] for r in rows]
    pages = report["pages"]
    lines.append(f"{len(pages['evaluated'])} of {len(pages['paired'])} paired page(s) evaluated")
    if report["problems"]:
        lines.append(f"problems ({len(report['problems'])}):")
        lines += [f"  {p['kind']}: {p['message']}" for p in report["problems"]]
    for name, result in report["metrics"].items():
        for page, why in result.get("skipped", {}).items():
            lines.append(f"  {name} skipped {page}: {why}")
    return "\n".join(lines)


def evaluate_command(args: argparse.Namespace, *, fid_feature: Any = None, clip_encoder: Any = None) -> int:
    """Run ``evaluate``: table on stdout, JSON with --json; exit status as in the module docstring.
    ColorFlowError (unusable arguments, an unwritable --json) → one ``error: ...`` line, exit 2."""
    try:
        report = evaluate(args, fid_feature=fid_feature, clip_encoder=clip_encoder)
        print(format_table(report))
        if args.json is not None:
            from ..files import write_bytes_atomic

            text = json.dumps(_json_safe(report), indent=2, ensure_ascii=False) + "\n"
            write_bytes_atomic(Path(args.json), text.encode("utf-8"))
    except ColorFlowError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    failed = [n for n, r in report["metrics"].items() if r["status"] == "failed"]
    if failed:
        print(f"error: {', '.join(failed)} failed on these pages (see above)", file=sys.stderr)
        return EXIT_METRIC_FAILED
    return 0


def main(argv: Sequence[str] | None = None, **inject: Any) -> int:
    """``evaluate`` alone (argv without the word "evaluate"); ``inject``: see `evaluate_command`."""
    parser = _Parser(prog="python -m colorflow_core")
    add_parser(parser.add_subparsers(dest="command", required=True, parser_class=_Parser))
    args = parser.parse_args(["evaluate", *(sys.argv[1:] if argv is None else argv)])
    return evaluate_command(args, **inject)


if __name__ == "__main__":
    sys.exit(main())
