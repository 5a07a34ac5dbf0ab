"""Store a tokenizer folder's weights in fp16 (half the size; the model computes in fp32).

    python -m fluid.tokenizers.half FOLDER [FOLDER ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

from safetensors.torch import load_file, save_file


def halve(folder: str | Path) -> None:
    path = Path(folder) / "model.safetensors"
    state = load_file(str(path))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, str(path))


if __name__ == "__main__":
    for f in sys.argv[1:]:
        halve(f)
        print(f"{f}: weights stored in fp16")
