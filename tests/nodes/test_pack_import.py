"""ComfyUI imports every custom-node pack at start-up: ours must not pull in the heavy model libraries
then (they load when a node runs), or every ComfyUI start pays for them."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.parity import REPO_ROOT

HEAVY = ("diffusers", "peft", "transformers", "open_clip")

# What ComfyUI's custom-node loader does with custom_nodes/<pack>/: import its __init__.py as a
# package, from another working directory.
IMPORT_THE_PACK = f"""
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("colorflow_pack", {str(REPO_ROOT / "__init__.py")!r},
                                              submodule_search_locations=[{str(REPO_ROOT)!r}])
pack = importlib.util.module_from_spec(spec)
sys.modules["colorflow_pack"] = pack
spec.loader.exec_module(pack)
print(json.dumps({{"nodes": len(pack.NODE_CLASS_MAPPINGS),
                  "heavy": sorted(m for m in {HEAVY!r} if m in sys.modules)}}))
"""


def test_the_pack_imports_without_the_heavy_model_libraries(tmp_path):
    done = subprocess.run([sys.executable, "-c", IMPORT_THE_PACK], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    from nodes import NODE_CLASS_MAPPINGS

    assert result["nodes"] == len(NODE_CLASS_MAPPINGS)
    assert result["heavy"] == [], f"imported when ComfyUI loads the pack: {result['heavy']}"
