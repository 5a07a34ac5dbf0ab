"""The ShapesEval round-trip ceiling of a tokenizer: real renders of ShapesEval's prompts,
encoded (posterior mean) and decoded by the tokenizer, scored by the detector. No generator
can score above it with this tokenizer.

    python scripts/tokenizer_ceiling.py TOKENIZER_FOLDER [--prompts-per-family 16] [--seeds 4]

Prints one JSON line: overall, per family, images, correct.
"""

from __future__ import annotations

import argparse
import json

import torch

from fluid.shapes.eval.classifier_data import round_trip
from fluid.shapes.eval.evaluation import ShapesEval
from fluid.tokenizers.load import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tokenizer", help="tokenizer folder")
    ap.add_argument("--prompts-per-family", type=int, default=16)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=64)
    args = ap.parse_args()
    tok = load_tokenizer(args.tokenizer)
    ev = ShapesEval(args.prompts_per_family, args.seeds, resolution=args.resolution)
    with torch.no_grad():
        result = ev.score(round_trip(ev.real_images(), tok)).to_dict()
    print(json.dumps({"tokenizer": tok.identity(), **ev.config(), **result}))


if __name__ == "__main__":
    main()
