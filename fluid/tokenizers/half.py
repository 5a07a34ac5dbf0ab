"""Store a tokenizer folder's weights in fp16 (half the size; the model computes in fp32).

    python -m fluid.tokenizers.half FOLDER [FOLDER ...]

The folder's identity changes with its weights, so an ``eval.json`` written by training is
updated to name the fp16 identity (the one generators trained on this folder record), and
keeps the trained weights' identity as ``trained_identity``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from fluid.files import save_safetensors


def halve(folder: str | Path) -> str:
    """Halve ``folder``'s weights in place; returns its new identity."""
    from fluid.tokenizers.load import load_tokenizer

    folder = Path(folder)
    path = folder / "model.safetensors"
    state = load_file(str(path))
    save_safetensors({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, path)
    identity = load_tokenizer(folder).identity()
    report = folder / "eval.json"
    if report.is_file():
        results = json.loads(report.read_text())
        if results.get("tokenizer") != identity:
            results.setdefault("trained_identity", results.get("tokenizer"))
            results["tokenizer"] = identity
            report.write_text(json.dumps(results, indent=2) + "\n")
    return identity


if __name__ == "__main__":
    for f in sys.argv[1:]:
        print(f"{f}: weights stored in fp16 ({halve(f)})")
