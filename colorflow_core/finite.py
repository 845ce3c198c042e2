"""Cheap checks that a stage's output holds only finite numbers (issue #11: NaN must never become
a black page written as a success). NaN comes from broken weights (e.g. a LoRA full of NaN) or
from float16 overflow on a GPU; the error names the stage and, for float16, suggests bf16/fp32."""
from __future__ import annotations

import torch

from .errors import NumericalError

FP16_HINT = ("In float16 this is usually an overflow: run in bfloat16 or float32 instead (CLI --dtype bf16 or "
             "--dtype fp32; node: Load ColorFlow Model dtype bf16 or fp32).")
WEIGHTS_HINT = ("The model weights are the likely cause (a weight or LoRA file holding NaN or infinite values): "
                "download the release files again.")


def check_finite(values: torch.Tensor, stage: str, dtype: torch.dtype) -> None:
    """Raise `NumericalError` naming ``stage`` and every page (batch index) of ``values`` that holds a NaN or
    infinity. ``dtype``: the precision the networks ran in (float16 adds the overflow hint)."""
    bad = ~torch.isfinite(values.detach()).flatten(1).all(dim=1)
    if bool(bad.any()):
        pages = [int(i) for i in bad.nonzero().flatten().tolist()]
        raise NumericalError(stage, pages, FP16_HINT if dtype == torch.float16 else WEIGHTS_HINT)
