#!/usr/bin/env bash
# The main job on the built-in default: train the default recipe (a class-conditional DiT on Fashion-MNIST),
# sample a labelled grid of every class from the EMA weights, and score the samples with a classifier dfm
# trains itself (Frechet distance on its features, and agreement with the asked class).
# Everything lands in runs/demo/ (override with DFM_DEMO_DIR). Extra arguments go to `dfm pretrain` as
# overrides, e.g. `bash scripts/demo.sh train.train_iters=200` for a quick look.
set -euo pipefail
cd "$(dirname "$0")/.."
DFM=./build/dfm
OUT=${DFM_DEMO_DIR:-runs/demo}
PER_CLASS=${DFM_DEMO_PER_CLASS:-10}
start=$SECONDS

echo "== 1/4 training (dfm pretrain, recipe dit_fashion_mnist)"
rm -rf "$OUT/checkpoints"
$DFM pretrain logger.output_dir="$OUT" checkpoint.save="$OUT/checkpoints" "$@"

echo "== 2/4 sampling $PER_CLASS images of every class (EMA weights, guidance 3, 40 Euler steps)"
$DFM generate --checkpoint "$OUT/checkpoints" --out "$OUT/samples" --classes all --per-class "$PER_CLASS" \
  --guidance 3 --steps 40 --seed 0

echo "== 3/4 the quality classifier (trained once, cached in runs/classifier.safetensors)"
if [ ! -f runs/classifier.safetensors ]; then
  $DFM eval train-classifier --out runs/classifier.safetensors
fi

echo "== 4/4 scoring the samples"
$DFM eval samples --samples "$OUT/samples/samples.json" --classifier runs/classifier.safetensors \
  --json "$OUT/quality.json"

echo
echo "demo finished in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s:"
echo "  sample grid   $OUT/samples/grid.png"
echo "  loss curve    $OUT/loss_curve.png"
echo "  metrics       $OUT/metrics.jsonl"
echo "  quality       $OUT/quality.json"
echo "  checkpoints   $OUT/checkpoints (export with: $DFM export --checkpoint $OUT/checkpoints --out $OUT/diffusers)"
