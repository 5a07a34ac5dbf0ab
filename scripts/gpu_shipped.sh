#!/usr/bin/env bash
# Train every shipped model for the built-in data on one GPU, as docs/shipped-models.md
# describes: the KL and VQ tokenizers side by side, then the four generator variants side
# by side with the same budget (steps x batch), then export them in fp16.
# Usage: OUT=<results folder> bash scripts/gpu_shipped.sh STAGE [tokenizer minutes] [generator steps]
#   STAGE: tokenizers, generators or all (a stage skips work whose results already exist).
#   TOK_BATCH / GEN_BATCH (128 / 512) and GEN_TIMEOUT (seconds, a guard on each generator run)
#   may be set in the environment, e.g. for a quick dry run on a CPU.
set -euo pipefail
stage=${1:-all}
tok_minutes=${2:-3}
steps=${3:-3500}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 OMP_NUM_THREADS=4
work=${WORK:-/tmp/fluid-work}
tok_batch=${TOK_BATCH:-128}
gen_batch=${GEN_BATCH:-512}
gen_timeout=${GEN_TIMEOUT:-0}
emb=${TEXT_EMBEDDINGS:-assets-tmp/shapes-minilm.safetensors}
mkdir -p "$work" "$OUT"
fluid() { python3 -m fluid.cli "$@"; }

if [[ ! -f "$work/tok-kl/config.json" || ! -f "$work/tok-vq/config.json" ]]; then
  fluid train-tokenizer --preset shapes-kl-f4 --out "$work/tok-kl" --steps 1000000 --batch-size "$tok_batch" --lr 1e-3 \
      --minutes "$tok_minutes" > "$work/tok-kl.log" 2>&1 &
  fluid train-tokenizer --preset shapes-vq-f16 --out "$work/tok-vq" --steps 1000000 --batch-size "$tok_batch" --lr 1e-3 \
      --minutes "$tok_minutes" > "$work/tok-vq.log" 2>&1 &
  wait
fi
tail -c 1500 "$work/tok-kl/eval.json" "$work/tok-vq/eval.json"
if [[ ! -f "$work/tok-fp16" ]]; then
  # Ship the tokenizers in fp16, and train the generators on exactly those weights.
  python3 -m fluid.tokenizers.half "$work/tok-kl" "$work/tok-vq" && touch "$work/tok-fp16"
  for t in tok-kl tok-vq; do tar czf "$OUT/$t.tgz" -C "$work" "$t" "$t.log"; done
fi
[[ $stage == tokenizers ]] && { ls -la "$OUT"; exit 0; }

variants="continuous-random continuous-raster discrete-random discrete-raster"
for v in $variants; do
  tok=$work/tok-kl; [[ $v == discrete-* ]] && tok=$work/tok-vq
  timeout "$gen_timeout" python3 -m fluid.cli train --preset shapes-small --variant "$v" --out "$work/gen-$v" --tokenizer "$tok" --text-embeddings "$emb" \
      --steps "$steps" --batch-size "$gen_batch" --set data.pool=100000 train.lr=6e-4 train.warmup_steps=300 \
      train.log_every=50 train.val_every=500 train.ckpt_every=1000 > "$work/gen-$v.log" 2>&1 &
done
wait
for v in $variants; do
  echo "$v: $(cat "$work/gen-$v/summary.json" 2>/dev/null | tr -d '\n' | head -c 600)"
  fluid export "$work/gen-$v" --out "$work/ship/$v" --dtype fp16 || { echo "$v: export failed"; continue; }
  cp "$work/gen-$v/metrics.jsonl" "$work/gen-$v/summary.json" "$work/gen-$v.log" "$work/ship/$v/" 2>/dev/null || true
  tar czf "$OUT/gen-$v.tgz" -C "$work/ship" "$v"
done
ls -la "$OUT"
