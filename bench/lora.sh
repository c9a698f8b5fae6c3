#!/usr/bin/env bash
# LoRA against full fine-tuning on a DiT (the Megatron paradigm, one process): a DiT-S/2-sized model (6 layers, 384
# wide, 6 heads, ffn 1536, patch 2) on Fashion-MNIST (28x28: 196 tokens), global batch 8 in micro-batches of 4,
# fine-tuned from the same checkpoint (2 steps from the init). Runs, rounds times over (interleaved, so that load
# from other jobs on a shared machine falls on all of them alike):
#   full         every parameter trained
#   lora         r 16 on the attention projections (to_q, to_k, to_v, to_out.0): the fast backward (the default)
#   lora_merged  the same through the merged-weight backward (peft.merged_backward=true: the full weight gradients)
#   lora_all     r 16 on every linear (peft.match_all_linear), fast backward
# Prints per run the median ms per step over all rounds' logged steps after 2 warm-up steps, then the ratios.
# usage: bench/lora.sh [steps=8] [rounds=2]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-8}
ROUNDS=${2:-2}
out=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$out"' EXIT
bin=./build/dfm
MODEL="model.num_layers=6 model.hidden_size=384 model.num_attention_heads=6 model.ffn_hidden_size=1536 \
model.patch_size=2"
RUN="train.global_batch_size=8 train.micro_batch_size=4 train.eval_iters=0 logger.log_interval=1 \
scheduler.lr_warmup_iters=0 dataset.num_workers=1 dataset.val_samples=16"
$bin pretrain $MODEL $RUN train.train_iters=2 logger.output_dir="$out/base" checkpoint.save="$out/base/ck" \
  >"$out/base.log" 2>&1
FT="$MODEL $RUN train.train_iters=$STEPS checkpoint.save=null checkpoint.pretrained_checkpoint=$out/base/ck"
ATTN=("peft.target_modules=['to_q','to_k','to_v','to_out.0']" peft.dim=16 peft.alpha=16)
echo "# $(date -u '+%F %H:%M') $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, load $(cut -d' ' -f1 \
/proc/loadavg), $STEPS steps x $ROUNDS rounds" >&2
for round in $(seq "$ROUNDS"); do
  # shellcheck disable=SC2086
  $bin pretrain $FT logger.output_dir="$out/full.$round" >"$out/full.$round.log" 2>&1
  # shellcheck disable=SC2086
  $bin pretrain $FT "${ATTN[@]}" logger.output_dir="$out/lora.$round" >"$out/lora.$round.log" 2>&1
  # shellcheck disable=SC2086
  $bin pretrain $FT "${ATTN[@]}" peft.merged_backward=true logger.output_dir="$out/lora_merged.$round" \
    >"$out/lora_merged.$round.log" 2>&1
  # shellcheck disable=SC2086
  $bin pretrain $FT peft.match_all_linear=true peft.dim=16 peft.alpha=16 logger.output_dir="$out/lora_all.$round" \
    >"$out/lora_all.$round.log" 2>&1
done
/usr/bin/python3 - "$out" "$ROUNDS" <<'EOF'
import glob, json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ms = {}
for run in ("full", "lora", "lora_merged", "lora_all"):
    v = []
    for r in range(1, rounds + 1):
        rows = [json.loads(l) for l in open(f"{out}/{run}.{r}/metrics.jsonl") if '"loss"' in l][2:]
        v += [8 / x["samples_per_s"] * 1e3 for x in rows]
    ms[run] = statistics.median(v)
    print(f"lora_bench run={run} ms_per_step={ms[run]:.1f} steps={len(v)}")
print(f"lora_ratio lora_vs_full={ms['lora'] / ms['full']:.3f}x lora_merged_vs_full={ms['lora_merged'] / ms['full']:.3f}x "
      f"lora_fast_vs_merged={ms['lora'] / ms['lora_merged']:.3f}x lora_all_vs_full={ms['lora_all'] / ms['full']:.3f}x")
EOF
