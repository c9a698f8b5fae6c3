#!/usr/bin/env bash
# Training steps through dfm and through PyTorch in one run, same machine, same thread count; PyTorch is timed
# with 1 and with all threads and the faster is used:
#   DiT-S/2 (32x32x4, batch 8, fp32, flow matching, AdamW);
#   a small Wan 2.1 (4 layers, 4 heads x 64, ffn 1024, text_dim 512; latents [2, 16, 4, 32, 32], text 64).
# usage: bench/run.sh [steps=6] [warmup=2]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
WARMUP=${2:-2}
NTH=$(nproc)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$NTH}
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" <<<"$2"; }

echo "# $(date -u +%F) $(lscpu | sed -n 's/^Model name: *//p') x $NTH cores" >&2
dfm=$(./build/bench/bench_dit S/2 8 "$STEPS" "$WARMUP" 2>/dev/null)
echo "# $dfm" >&2
best=""
for th in 1 "$NTH"; do
  t=$(/usr/bin/python3 bench/dit_torch.py S/2 8 "$STEPS" "$WARMUP" "$th" 2>/dev/null)
  echo "# $t" >&2
  if [ -z "$best" ] || awk "BEGIN{exit !($(field ms "$t") < $(field ms "$best"))}"; then best=$t; fi
done
dms=$(field ms "$dfm"); tms=$(field ms "$best")
printf 'dit_s2_b8_train_step dfm_ms=%s torch_ms=%s speedup=%.2fx dfm_rss_mb=%s torch_rss_mb=%s dfm_gflops=%s torch_threads=%s\n' \
  "$dms" "$tms" "$(awk "BEGIN{print $tms/$dms}")" "$(field rss_mb "$dfm")" "$(field rss_mb "$best")" \
  "$(field gflops "$dfm")" "$(field threads "$best")"

wan=$(./build/bench/bench_wan "$STEPS" "$WARMUP" 2>/dev/null)
echo "# $wan" >&2
best=""
for th in 1 "$NTH"; do
  t=$(/usr/bin/python3 bench/wan_torch.py "$STEPS" "$WARMUP" "$th" 2>/dev/null)
  echo "# $t" >&2
  if [ -z "$best" ] || awk "BEGIN{exit !($(field ms "$t") < $(field ms "$best"))}"; then best=$t; fi
done
dms=$(field ms "$wan"); tms=$(field ms "$best")
printf 'wan_small_train_step dfm_ms=%s torch_ms=%s speedup=%.2fx dfm_rss_mb=%s torch_rss_mb=%s dfm_gflops=%s torch_threads=%s\n' \
  "$dms" "$tms" "$(awk "BEGIN{print $tms/$dms}")" "$(field rss_mb "$wan")" "$(field rss_mb "$best")" \
  "$(field gflops "$wan")" "$(field threads "$best")"
