#!/usr/bin/env bash
# Data parallelism on this machine: one process against mpirun -np 2 (DP = 2) with each sharding strategy, on a
# DiT of S/2's width and depth over Fashion-MNIST (28x28, patch 2: 196 tokens), global batch 16.
# Prints, per layout: samples/s (median of the logged steps after warm-up), the share of step time a rank
# spent waiting for communication that compute did not hide (comm_wait_frac), and the per-rank bytes of
# parameters, gradients and optimizer state + EMA from the start-up line.
# usage: bench/dp.sh [steps=8]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-8}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
MODEL="model.num_layers=12 model.hidden_size=384 model.num_attention_heads=6 model.ffn_hidden_size=1536"
RUN="train.train_iters=$STEPS train.global_batch_size=16 train.micro_batch_size=8 train.eval_iters=0 \
logger.log_interval=1 checkpoint.save=null scheduler.lr_warmup_iters=1 dataset.num_workers=1"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

report() { # $1 = label, $2 = run folder, $3 = log
  python3 - "$1" "$2/metrics.jsonl" "$3" <<'EOF'
import json, re, statistics, sys
label, metrics, log = sys.argv[1:4]
rows = [json.loads(l) for l in open(metrics) if '"loss"' in l][2:]  # the first two steps warm up
sps = statistics.median(r["samples_per_s"] for r in rows)
comm = statistics.median(r.get("comm_wait_frac", 0.0) for r in rows)
m = re.search(r"parameters ([\d.]+) MB, gradients ([\d.]+) MB, optimizer state \+ EMA ([\d.]+) MB", open(log).read())
print(f"dp_bench layout={label} samples_per_s={sps:.2f} comm_wait_frac={comm:.3f} "
      f"param_mb={m.group(1)} grad_mb={m.group(2)} optim_mb={m.group(3)}")
EOF
}

echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, $STEPS steps" >&2
./build/dfm pretrain $MODEL $RUN logger.output_dir="$out/one" >"$out/one.log" 2>&1
report one_process "$out/one" "$out/one.log"
for s in no_shard optim optim_grads optim_grads_params; do
  mpirun --oversubscribe -np 2 ./build/dfm pretrain $MODEL $RUN ddp.data_parallel_sharding_strategy=$s \
    logger.output_dir="$out/$s" >"$out/$s.log" 2>&1
  report "dp2_$s" "$out/$s" "$out/$s.log"
done
mpirun --oversubscribe -np 2 ./build/dfm pretrain $MODEL $RUN ddp.overlap_grad_reduce=false \
  logger.output_dir="$out/noov" >"$out/noov.log" 2>&1
report dp2_no_shard_no_overlap "$out/noov" "$out/noov.log"
