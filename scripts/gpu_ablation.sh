#!/usr/bin/env bash
# The Fluid ablation at the shipping budget on one GPU (docs/evaluation.md, "Why Fluid
# trailed"): a 16-channel KL tokenizer (f8, 2x2 patches) for the token-geometry arm, then
# the fluid-ablation sweep, five runs sharing the GPU at a time. Small results only (run
# records, eval metrics, logs) are packed into $OUT.
# Usage: OUT=<results folder> bash scripts/gpu_ablation.sh [tokenizer minutes]
set -euo pipefail
tok_minutes=${1:-3.25}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=4
mkdir -p work "$OUT"
if [[ ! -f work/tok-kl-f8/config.json ]]; then
  python3 -m fluid.cli train-tokenizer --preset shapes-kl-f8 --out work/tok-kl-f8 --steps 1000000 --batch-size 128 \
      --lr 1e-3 --minutes "$tok_minutes" > "$OUT/tok-kl-f8.log" 2>&1 &
fi
# Every arm but kl-f8 runs while the tokenizer trains; kl-f8 after it.
arms=$(python3 -m fluid.cli scale --sweep fluid-ablation --list | awk '/arm=/{print $1}' | grep -v 'arm=kl-f8')
python3 -m fluid.cli scale --sweep fluid-ablation --out work/ablation --jobs 5 --device cuda --only $arms || true
wait
python3 -m fluid.tokenizers.half work/tok-kl-f8 || true
python3 -m fluid.cli scale --sweep fluid-ablation --out work/ablation --jobs 5 --device cuda || true
cp work/tok-kl-f8/eval.json "$OUT/tok-kl-f8-eval.json" 2>/dev/null || true
tar czf "$OUT/ablation.tgz" --exclude='step-*' --exclude='latest' -C work ablation
ls -la "$OUT"
