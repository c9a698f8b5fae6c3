#!/usr/bin/env bash
# The Automodel paradigm against the Megatron paradigm, and LoRA against full fine-tuning, on one process:
# the same small Wan 2.1 (bench/run.sh's: 4 layers, 4 heads x 64, ffn 1024, text_dim 512; latents [16, 4, 32, 32],
# text 64 tokens), the same pre-encoded samples (random, dfm's safetensors form), global batch 4 in micro-batches
# of 2, fine-tuned from the same diffusers folder:
#   megatron       dfm pretrain (Megatron tree, checkpoint.pretrained_checkpoint = the folder, DDP no_shard)
#   automodel      dfm finetune -c recipes/automodel/wan_tiny_finetune.yaml (FSDP optim_grads_params)
#   automodel_lora the same with peft: r 16 on every attention projection (to_q, to_k, to_v, to_out.0)
#   automodel_lora_merged  the same LoRA trained the older way (peft.merged_backward: true: the model's full
#                  weight gradients, then the chain rule), for the before / after of the fast LoRA backward
# Prints per run: ms per step (median over the logged steps after 2 warm-up steps, from samples_per_s), peak RSS,
# and the per-rank parameter / gradient / optimizer+EMA bytes of the start-up line; then the ratios.
# usage: bench/paradigms.sh [steps=10]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-10}
out=$(mktemp -d)
[ -n "${KEEP:-}" ] || trap 'rm -rf "$out"' EXIT; echo "# work dir $out" >&2
bin=./build/dfm

# 16 samples in dfm's safetensors form
/usr/bin/python3 - "$out/st" <<'EOF'
import json, os, struct, sys
import numpy as np
d = sys.argv[1]
os.makedirs(d)
rng = np.random.default_rng(0)
for i in range(16):
    t = {"video_latents": rng.standard_normal((16, 4, 32, 32), dtype=np.float32),
         "text_embeddings": rng.standard_normal((64, 512), dtype=np.float32)}
    header, off, blobs = {}, 0, []
    for k, v in t.items():
        b = v.tobytes()
        header[k] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [off, off + len(b)]}
        off += len(b)
        blobs.append(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(f"{d}/s{i:03d}.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
EOF

MODEL="model.num_layers=4 model.hidden_size=256 model.num_attention_heads=4 model.ffn_hidden_size=1024 \
model.in_channels=16 model.out_channels=16 model.text_dim=512 model.image_size=32 model.num_frames=4 model.text_len=64"
# the pretrained model: one step from the Wan init, exported as a diffusers folder
$bin pretrain --recipe wan_tiny $MODEL dataset.type=video_folder dataset.path="$out/st" dataset.max_samples=null \
  dataset.val_samples=4 train.train_iters=1 train.global_batch_size=4 train.micro_batch_size=2 \
  logger.output_dir="$out/base" checkpoint.save="$out/base/ck" >"$out/base.log" 2>&1
$bin export --checkpoint "$out/base/ck" --out "$out/hf" >"$out/export.log" 2>&1

run() { # $1 = label, rest = command; prints the measurements
  local label=$1
  shift
  /usr/bin/time -v "$@" >"$out/$label.log" 2>&1
  /usr/bin/python3 - "$label" "$out/$label" "$out/$label.log" <<'EOF'
import json, re, statistics, sys
label, run, log = sys.argv[1:4]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"loss"' in l][2:]
ms = statistics.median(4 / r["samples_per_s"] * 1e3 for r in rows)
text = open(log).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", text).group(1)) / 1024
m = re.search(r"parameters ([\d.]+) MB, gradients ([\d.]+) MB, optimizer state \+ EMA ([\d.]+) MB", text)
lora = re.search(r"LoRA: r (\d+).* on (\d+) linear layers: (\d+) trainable", text)
extra = f" lora_r={lora.group(1)} lora_layers={lora.group(2)} trainable={lora.group(3)}" if lora else ""
print(f"paradigm_bench run={label} ms_per_step={ms:.1f} peak_rss_mb={rss:.0f} param_mb={m.group(1)} "
      f"grad_mb={m.group(2)} optim_ema_mb={m.group(3)}{extra}", flush=True)
EOF
}

COMMON_AM="-c recipes/automodel/wan_tiny_finetune.yaml --model.pretrained_model_name_or_path=$out/hf \
--data.dataloader.meta_folder=$out/st --step_scheduler.global_batch_size=4 --step_scheduler.local_batch_size=2 \
--step_scheduler.max_steps=$STEPS --step_scheduler.val_every_steps=null --step_scheduler.log_every=1 \
--checkpoint.enabled=false --checkpoint.save_consolidated=false --data.dataloader.num_workers=1"
echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p') x $(nproc) cores, $STEPS steps" >&2
{
  run megatron $bin pretrain --recipe wan_tiny $MODEL dataset.type=video_folder dataset.path="$out/st" \
    dataset.max_samples=null dataset.val_samples=0 dataset.num_workers=1 train.train_iters="$STEPS" \
    train.global_batch_size=4 train.micro_batch_size=2 train.eval_iters=0 logger.log_interval=1 \
    scheduler.lr_warmup_iters=0 checkpoint.save=null checkpoint.pretrained_checkpoint="$out/hf" \
    logger.output_dir="$out/megatron"
  # shellcheck disable=SC2086
  run automodel $bin finetune $COMMON_AM --checkpoint.checkpoint_dir="$out/automodel"
  # shellcheck disable=SC2086
  run automodel_lora $bin finetune $COMMON_AM --checkpoint.checkpoint_dir="$out/automodel_lora" \
    "--peft.target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']" --peft.dim=16 --peft.alpha=16
  # shellcheck disable=SC2086
  run automodel_lora_merged $bin finetune $COMMON_AM --checkpoint.checkpoint_dir="$out/automodel_lora_merged" \
    "--peft.target_modules=['to_q', 'to_k', 'to_v', 'to_out.0']" --peft.dim=16 --peft.alpha=16 \
    --peft.merged_backward=true
} | tee "$out/summary"
/usr/bin/python3 - "$out/summary" <<'EOF'
import re, sys
r = {}
for line in open(sys.argv[1]):
    d = dict(kv.split("=") for kv in line.split()[1:])
    r[d["run"]] = d
f = lambda a, b, k: float(r[a][k]) / float(r[b][k])
print(f"paradigm_ratio automodel_vs_megatron step_time={f('automodel', 'megatron', 'ms_per_step'):.3f}x "
      f"peak_rss={f('automodel', 'megatron', 'peak_rss_mb'):.3f}x")
print(f"paradigm_ratio lora_vs_full step_time={f('automodel_lora', 'automodel', 'ms_per_step'):.3f}x "
      f"peak_rss={f('automodel_lora', 'automodel', 'peak_rss_mb'):.3f}x "
      f"optim_ema={f('automodel_lora', 'automodel', 'optim_ema_mb'):.4f}x")
print(f"paradigm_ratio lora_merged_vs_full step_time={f('automodel_lora_merged', 'automodel', 'ms_per_step'):.3f}x "
      f"peak_rss={f('automodel_lora_merged', 'automodel', 'peak_rss_mb'):.3f}x")
print(f"paradigm_ratio lora_fast_vs_merged step_time={f('automodel_lora', 'automodel_lora_merged', 'ms_per_step'):.3f}x")
EOF
