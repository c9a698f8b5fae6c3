#!/usr/bin/env bash
# Megatron layouts on this machine (issue 10's benchmark): a DiT-B/2-sized model (12 layers, 768 wide, 12 heads,
# patch 2) on Fashion-MNIST (28x28: 196 tokens), global batch 8 in micro-batches of 2, one process against each
# 2-rank layout. Prints per layout: samples/s (median over the logged steps after 1 warm-up), the share of step time
# a rank waited in collectives that compute did not hide (comm_wait_frac), the pipeline bubble, and the per-rank
# bytes of parameters, gradients, optimizer state + EMA and activations from the start-up line.
# usage: bench/layouts.sh [steps=4] [layout ...]
#   (layouts: one dp2 dp2_fsdp tp2 tp2_sp cp2 pp2 pp2_vpp2 recompute; cp2_a2a, and on 4 ranks tp2_pp2, cp2_pp2,
#   tp2_sp_cp2, and on 8 tp2_sp_cp2_pp2, when named)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-4}
shift || true
LAYOUTS=${*:-one dp2 dp2_fsdp tp2 tp2_sp cp2 pp2 pp2_vpp2 recompute}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
MODEL="model.num_layers=12 model.hidden_size=768 model.num_attention_heads=12 model.ffn_hidden_size=3072 model.patch_size=2"
RUN="train.train_iters=$STEPS train.global_batch_size=8 train.micro_batch_size=2 train.eval_iters=0 \
logger.log_interval=1 checkpoint.save=null scheduler.lr_warmup_iters=1 dataset.num_workers=1 dataset.val_samples=16"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

report() { # $1 = label, $2 = run folder, $3 = log
  /usr/bin/python3 - "$1" "$2/metrics.jsonl" "$3" <<'EOF'
import json, re, statistics, sys
label, metrics, log = sys.argv[1:4]
rows = [json.loads(l) for l in open(metrics) if '"loss"' in l][1:]
sps = statistics.median(r["samples_per_s"] for r in rows)
comm = statistics.median(r.get("comm_wait_frac", 0.0) for r in rows)
bubble = rows[0].get("pp_bubble", 0.0)
text = open(log).read()
m = re.search(r"parameters ([\d.]+) MB, gradients ([\d.]+) MB, optimizer state \+ EMA ([\d.]+) MB, activations ([\d.]+) MB",
              text)
print(f"layout_bench layout={label} samples_per_s={sps:.2f} comm_wait_frac={comm:.3f} pp_bubble={bubble:.3f} "
      f"param_mb={m.group(1)} grad_mb={m.group(2)} optim_ema_mb={m.group(3)} act_mb={m.group(4)}", flush=True)
EOF
}

run() { # $1 = label, $2 = ranks, rest = overrides
  local label=$1 np=$2
  shift 2
  if [ "$np" = 1 ]; then
    ./build/dfm pretrain $MODEL $RUN logger.output_dir="$out/$label" "$@" >"$out/$label.log" 2>&1
  else
    mpirun --oversubscribe -np "$np" ./build/dfm pretrain $MODEL $RUN logger.output_dir="$out/$label" "$@" \
      >"$out/$label.log" 2>&1
  fi || { echo "layout_bench layout=$label failed: $(tail -1 "$out/$label.log")"; return 0; }
  report "$label" "$out/$label" "$out/$label.log"
}

echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, $STEPS steps" >&2
for l in $LAYOUTS; do
  case $l in
    one) run one 1 ;;
    dp2) run dp2 2 ;;
    dp2_fsdp) run dp2_fsdp 2 ddp.data_parallel_sharding_strategy=optim_grads_params ;;
    tp2) run tp2 2 model.tensor_model_parallel_size=2 ;;
    tp2_sp) run tp2_sp 2 model.tensor_model_parallel_size=2 model.sequence_parallel=true ;;
    cp2) run cp2 2 model.context_parallel_size=2 ;;
    cp2_a2a) run cp2_a2a 2 model.context_parallel_size=2 model.cp_comm_type=a2a ;;
    pp2) run pp2 2 model.pipeline_model_parallel_size=2 ;;
    pp2_vpp2) run pp2_vpp2 2 model.pipeline_model_parallel_size=2 model.virtual_pipeline_model_parallel_size=2 ;;
    tp2_pp2) run tp2_pp2 4 model.tensor_model_parallel_size=2 model.pipeline_model_parallel_size=2 ;;
    cp2_pp2) run cp2_pp2 4 model.context_parallel_size=2 model.pipeline_model_parallel_size=2 ;;
    tp2_sp_cp2) run tp2_sp_cp2 4 model.tensor_model_parallel_size=2 model.sequence_parallel=true model.context_parallel_size=2 ;;
    tp2_sp_cp2_pp2) run tp2_sp_cp2_pp2 8 model.tensor_model_parallel_size=2 model.sequence_parallel=true \
      model.context_parallel_size=2 model.pipeline_model_parallel_size=2 ;;
    recompute) run recompute 1 model.recompute_granularity=full model.recompute_method=uniform model.recompute_num_layers=1 ;;
    *) echo "unknown layout '$l'" >&2; exit 2 ;;
  esac
done
