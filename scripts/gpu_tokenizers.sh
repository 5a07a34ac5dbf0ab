#!/usr/bin/env bash
# Train the shipped shapes tokenizers (KL and VQ) side by side on one GPU, then probe the
# training throughput of the four generator variants running together.
# Usage: OUT=<results folder> bash scripts/gpu_tokenizers.sh [minutes]
set -euo pipefail
minutes=${1:-3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
work=${WORK:-/tmp/fluid-work}
mkdir -p "$work" "$OUT"
fluid() { python3 -m fluid.cli "$@"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
fluid train-tokenizer --preset shapes-kl-f8 --out "$work/tok-kl" --steps 200000 --batch-size 128 --lr 1e-3 \
    --minutes "$minutes" > "$work/tok-kl.log" 2>&1 &
fluid train-tokenizer --preset shapes-vq-f16 --out "$work/tok-vq" --steps 200000 --batch-size 128 --lr 1e-3 \
    --minutes "$minutes" > "$work/tok-vq.log" 2>&1 &
wait
tail -n 3 "$work/tok-kl.log" "$work/tok-vq.log"
# Throughput probe: all four variants at once, 75 s each.
for v in continuous-random continuous-raster discrete-random discrete-raster; do
  tok=$work/tok-kl; [[ $v == discrete-* ]] && tok=$work/tok-vq
  timeout 75 python3 -m fluid.cli train --preset shapes-small --variant "$v" --out "$work/probe-$v" \
      --tokenizer "$tok" --text-embeddings assets-tmp/shapes-minilm.safetensors --batch-size 512 \
      --set data.pool=100000 train.log_every=20 train.val_every=0 train.ckpt_every=100000 > "$work/probe-$v.log" 2>&1 &
done
wait || true
for v in continuous-random continuous-raster discrete-random discrete-raster; do
  echo "$v: $(tail -n 2 "$work/probe-$v/metrics.jsonl" 2>/dev/null | head -c 400)"
  tail -n 2 "$work/probe-$v.log" | tr '\r' '\n' | tail -n 2
done
tar czf "$OUT/tokenizers.tgz" -C "$work" tok-kl tok-vq tok-kl.log tok-vq.log
ls -la "$OUT"
