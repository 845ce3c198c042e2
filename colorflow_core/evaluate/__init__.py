"""``python -m colorflow_core evaluate PRED_DIR GT_DIR``: the ColorFlow-Bench metrics of the paper.

`pairing` pairs predicted and ground-truth pages by file stem and names every mismatch; `metrics`
holds PSNR, SSIM, FID and CLIP image similarity (each a small function over lists of images);
`consistency` scores how close the colours of each page are to the reference patches retrieved for
it; `command` is the CLI subcommand. Heavy libraries (torchmetrics, scikit-image, transformers) are
imported inside the functions, so importing this package stays light.
"""
