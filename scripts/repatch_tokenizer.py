"""A view of one of our KL tokenizers with another patch size: the same weights and latents,
grouped into ``patch_size`` x ``patch_size`` tokens (the shipped f4 KL in 2x2 patches gives
64 tokens of 16 channels instead of 16 tokens of 64). Reconstructions, and so the tokenizer's
ShapesEval round-trip ceiling, do not change; only the token geometry does.

    python scripts/repatch_tokenizer.py fluid/assets/tokenizers/shapes-kl tokenizers/shapes-kl-f4-p2 --patch-size 2
"""

import argparse
import json
import shutil
from pathlib import Path

from fluid.tokenizers.load import load_tokenizer


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="a tokenizer folder of ours (config.json + model.safetensors)")
    p.add_argument("out", help="the new folder")
    p.add_argument("--patch-size", type=int, required=True)
    args = p.parse_args(argv)
    src, out = Path(args.source), Path(args.out)
    config = json.loads((src / "config.json").read_text())
    if config.get("format") != "fluid-tokenizer" or config.get("kind") != "kl":
        raise SystemExit(f"{src}: not one of our KL tokenizers (config.json format/kind)")
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "eval.json"):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    (out / "config.json").write_text(json.dumps({**config, "patch_size": args.patch_size}, indent=2) + "\n")
    tok = load_tokenizer(out)  # checks that the latent grid divides into the patches
    n = tok.num_tokens(config["resolution"])
    print(f"{out}: {n} tokens of {tok.token_dim} channels (was patch size {config['patch_size']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
