#!/usr/bin/env bash
# Crash consistency: a tiny run killed with SIGKILL at random moments (checkpoints are written every step, so
# many kills land mid-checkpoint), resumed from whatever is on disk, must end bit-identical to an uninterrupted
# run and never load a corrupt checkpoint; the same under mpirun with one rank killed; a write error while
# saving (a file-size limit) must fail clearly and leave the previous checkpoint loadable.
# usage: tests/reliability.sh [kills=5]  (make reliability runs 20). Prints PASS/FAIL lines and
#        kills=<n> resumed_bit_exact=<n> corrupt_loaded=<n>
set -u
KILLS=${1:-5}
BIN=${DFM_BIN:-build/dfm}
dir=$(mktemp -d /tmp/dfm_rel_XXXXXX)
trap 'rm -rf "$dir"' EXIT
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
TINY="model.num_layers=2 model.hidden_size=32 model.num_attention_heads=2 model.ffn_hidden_size=64 model.patch_size=7
train.train_iters=16 train.global_batch_size=8 train.micro_batch_size=4 train.eval_interval=8 train.eval_iters=1
dataset.val_samples=16 dataset.num_workers=1 logger.log_interval=1 checkpoint.save_interval=1
checkpoint.most_recent_k=2 optimizer.lr=3e-3 scheduler.lr_warmup_iters=2"

losses() { sed 's/, "samples_per_s".*//' "$1"; }   # the reproducible part of metrics.jsonl

"$BIN" pretrain $TINY logger.output_dir="$dir/ref" checkpoint.save="$dir/ref/ck" >"$dir/ref.log" 2>&1 ||
  { echo "FAIL the uninterrupted run failed"; tail "$dir/ref.log"; exit 1; }
ref_w="$dir/ref/ck/iter_0000016/model.safetensors"

exact=0 corrupt=0 killed=0
trial() { # $1 = name, $2 = launcher ("" or "mpirun ..."), $3 = extra keys
  local run="$dir/$1" n=0 was_killed=0
  while :; do
    local load=""
    [ -f "$run/ck/latest_checkpointed_iteration.txt" ] && load="checkpoint.load=$run/ck"
    $2 "$BIN" pretrain $TINY $3 logger.output_dir="$run" checkpoint.save="$run/ck" $load >>"$run.log" 2>&1 &
    local pid=$!
    if [ "$n" -lt 1 ]; then # one kill per trial: after a random number of logged steps, plus up to 90 ms
      local k=$(( RANDOM % 14 + 1 ))
      for i in $(seq 400); do
        [ -f "$run/metrics.jsonl" ] && [ "$(wc -l < "$run/metrics.jsonl")" -ge "$k" ] && break
        sleep 0.02
      done
      sleep "0.0$(( RANDOM % 10 ))"
      if [ -n "$2" ]; then # under mpirun: kill one rank, the job must end
        local rank
        rank=$(pgrep -f "^[^ ]*dfm pretrain .*$run" | tail -1)
        [ -n "$rank" ] && kill -9 "$rank" 2>/dev/null
      else
        kill -9 "$pid" 2>/dev/null
      fi
      wait "$pid" 2>/dev/null
      [ $? -ne 0 ] && was_killed=1
      n=$((n + 1))
      continue
    fi
    wait "$pid"
    local rc=$?
    [ "$rc" -eq 0 ] && break
    grep -q "cannot resume" "$run.log" && corrupt=$((corrupt + 1))
    echo "FAIL $1: the resumed run failed (status $rc)"; tail -5 "$run.log"; return
  done
  if [ "$was_killed" -eq 0 ]; then
    echo "PASS $1: (the run finished before the kill landed; nothing to resume)"; return
  fi
  killed=$((killed + 1))
  local at
  at=$(sed -n 's/^resumed from .*iter_0*\([0-9]*\) at.*/\1/p' "$run.log" | head -1)
  if [ "$(losses "$run/metrics.jsonl")" = "$(losses "$dir/ref/metrics.jsonl")" ] &&
     { [ -f "$run/ck/iter_0000016/model.safetensors" ] && cmp -s "$run/ck/iter_0000016/model.safetensors" "$ref_w" ||
       [ -n "$3" ]; }; then
    exact=$((exact + 1))
    echo "PASS $1: killed during training, resumed from ${at:-the start}, bit-identical to the uninterrupted run"
  else
    echo "FAIL $1: the resumed run differs from the uninterrupted one"
  fi
  grep -q "cannot resume" "$run.log" && corrupt=$((corrupt + 1))
}

for k in $(seq 1 "$KILLS"); do trial "kill$k" "" ""; done
trial "mpi_kill" "mpirun --oversubscribe -np 2" "ddp.data_parallel_sharding_strategy=optim_grads_params"

# a write error while saving: the file-size limit lets the run start but not write its optimizer state
w="$dir/wr"
"$BIN" pretrain $TINY train.train_iters=3 scheduler.lr_decay_iters=16 logger.output_dir="$w" checkpoint.save="$w/ck" \
  >"$w.log" 2>&1
(ulimit -f 300; "$BIN" pretrain $TINY scheduler.lr_decay_iters=16 logger.output_dir="$w" checkpoint.save="$w/ck" \
  checkpoint.load="$w/ck" >>"$w.log" 2>&1)
rc=$?
if [ "$rc" -ne 0 ] && grep -q "File too large" "$w.log" && [ "$(cat "$w/ck/latest_checkpointed_iteration.txt")" = 3 ]; then
  echo "PASS a write error while saving ends the run with the file named; the tracker still names iteration 3"
else
  echo "FAIL a write error while saving (status $rc):"; tail -3 "$w.log"
fi
"$BIN" pretrain $TINY logger.output_dir="$w" checkpoint.save="$w/ck" checkpoint.load="$w/ck" >>"$w.log" 2>&1
if [ $? -eq 0 ] && cmp -s "$w/ck/iter_0000016/model.safetensors" "$ref_w"; then
  echo "PASS after the failed save, the previous checkpoint resumes to the uninterrupted run's weights"
else
  echo "FAIL resuming after the failed save"; tail -3 "$w.log"
fi
echo "kills=$killed resumed_bit_exact=$exact corrupt_loaded=$corrupt"
