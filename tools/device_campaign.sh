#!/usr/bin/env bash
# One GPU machine hold of the training campaign (issue 13), in three kinds of call on the lent device:
#   bash tools/device_campaign.sh start   # wheels, cache build (CPU cores) + speed benchmark (GPU), then training
#                                         # detached (setsid), the run's folder under /tmp/campaign
#   bash tools/device_campaign.sh poll    # progress, newest export, metrics -> $OUT
#   bash tools/device_campaign.sh wait    # poll, after waiting for the training process to end
#   RUNS="a b" bash tools/device_campaign.sh judge   # after both runs end: CSP 200 x 1 and latent statistics (and,
#                                         # with REC=1, VAE reconstruction) of each run's export, all results in ONE
#                                         # file $OUT/results.tar, plus the export of the run with the best CSP as
#                                         # $OUT/export_RUN.tar.part-* (every run's when they fit in 8 files /
#                                         # 64 MiB, else the best run's; EXPORTS=best forces the latter)
# Carry: .whl (pymatgen-core, pymatgen, monty, spglib, periodictable, orjson, palettable, uncertainties, ruamel.yaml
# wheels for cp312), .carry/data (pool.csv.gz, mp20 test.csv, mp_magnetic_orderings.csv.gz), .carry/bench (a small
# array cache for the benchmark), .carry/baseline (the previous commit's package, for the before/after rows).
# Settings come from the environment: TRAIN_MINUTES, VAE_SHARE (fraction of it for the VAE stage), INIT (the
# model folder or export to continue from; default the shipped model), SKIP_BENCH=1 (no speed benchmark: step counts
# from VAE_RATE / FLOW_RATE, samples/s, default the 2026-12-01 measurement), VAE_LR, FLOW_LR, WARMUP (peak learning
# rates and warm-up steps), MODEL (config name, e.g. deep: the VAE grown from INIT's), EXTRA (more gpsk train flags). A carried .carry/pool/data.npz replaces the cache build.
set -u
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# RUN names one of several runs that share the GPU (each its own /tmp/campaign_RUN and $OUT/RUN); the array cache
# is built (or unpacked) once, in /tmp/campaign_cache, for all of them.
R=/tmp/campaign${RUN:+_$RUN}
OUT=${OUT:-/tmp/out}
O=$OUT${RUN:+/$RUN}
C=/tmp/campaign_cache
mkdir -p $O
mode=${1:-poll}

report() {
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  tail -n 3 $R/train.log 2>/dev/null
  grep '"split": "val"' $R/run/metrics.jsonl 2>/dev/null | tail -n 2
  tail -n 1 $R/run/metrics.jsonl 2>/dev/null
  cp $R/run/metrics.jsonl $R/train.log $O/ 2>/dev/null
  if [ -d $R/run/export ]; then
    tar -C $R/run -cf - export | split -b 15M - $O/export.tar.part-
    python3 -c "import json; print('export:', json.load(open('$R/run/export/config.json'))['export'])"
  fi
  ls -la $O
}

if [ "$mode" = start ]; then
  t0=$(date +%s)
  [ -d /tmp/site/pymatgen ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site ${WHL:-.whl}/*.whl || exit 1
  rm -rf $R; mkdir -p $R; cp -r gpsk_materials $R/code_pkg; mkdir -p $R/code; mv $R/code_pkg $R/code/gpsk_materials
  cp -r .carry/data $R/data
  # the training cache, built on the CPU cores while the GPU benchmark runs
  # (or the carried one, .carry/pool/data.npz, built by the same command on another machine)
  if [ -f $C/data.npz ]; then
    (mkdir -p $R/pool && cp $C/data.npz $R/pool/ && echo "cache of an earlier run" > $R/cache.log) &
  elif [ -f .carry/pool/data.npz ]; then
    (mkdir -p $R/pool $C && cp .carry/pool/data.npz $R/pool/ && cp .carry/pool/data.npz $C/ \
      && echo "cache carried" > $R/cache.log) &
  else
  (cd $R && PYTHONPATH=$R/code:/tmp/site python3 -m gpsk_materials.training \
      --data data/pool.csv.gz data/mp_magnetic_orderings.csv.gz --exclude-csv data/test.csv --match-structures \
      --out $R/pool --cache-only --workers 14 --no-progress > $R/cache.log 2>&1; echo "cache rc=$?" >> $R/cache.log
   mkdir -p $C && cp $R/pool/data.npz $C/) &
  fi
  cache_pid=$!
  if [ "${SKIP_BENCH:-0}" = 1 ]; then
    # rates measured on 2026-12-01 (docs/benchmarks.md): compiled VAE at batch 256, compiled flow at batch 1,024
    printf '{"rows": [{"stage": "vae", "batch": 256, "variant": "bf16+channels_last+compile", "samples_per_s": %s},
      {"stage": "flow", "batch": 1024, "variant": "bf16+compile", "samples_per_s": %s}]}' \
      "${VAE_RATE:-1402}" "${FLOW_RATE:-34200}" > $O/training_speed.json
    echo '{"rows": []}' > $O/training_speed_compile.json
  else
    PYTHONPATH=.carry/baseline:/tmp/site python3 .carry/baseline/benchmarks/training_speed.py --data .carry/bench/data.npz \
        --device cuda --vae-batches 128 --flow-batches 1024 --steps 20 --out $O/training_speed_before.json 2>&1 | grep '^{'
    PYTHONPATH=$R/code:/tmp/site python3 benchmarks/training_speed.py --data .carry/bench/data.npz --device cuda \
        --vae-batches 128 256 --flow-batches 1024 --steps 20 --variants bf16 bf16+channels_last \
        --out $O/training_speed.json 2>&1 | grep -v Warn | tail -n 6
    PYTHONPATH=$R/code:/tmp/site python3 benchmarks/training_speed.py --data .carry/bench/data.npz --device cuda \
        --vae-batches 256 --flow-batches 1024 --steps 20 --variants bf16+channels_last+compile bf16+compile \
        --out $O/training_speed_compile.json 2>&1 | grep -v Warn | tail -n 3
  fi
  wait $cache_pid; tail -n 4 $R/cache.log; [ -f .carry/pool/data.npz ] || cp $R/pool/data.npz $O/data.npz
  # speed options and step counts from what was just measured
  read -r VAE_OPTS VAE_RATE FLOW_RATE <<<"$(O=$O python3 - <<'PY'
import json, os
rows = [r for f in ("training_speed.json", "training_speed_compile.json")
        for r in json.load(open(os.environ["O"] + "/" + f))["rows"]]
vae = [r for r in rows if r["stage"] == "vae" and r["batch"] == 256 and r.get("samples_per_s")]
best = max(vae, key=lambda r: r["samples_per_s"])
opts = {"bf16": "", "bf16+channels_last": "--channels-last", "bf16+channels_last+compile": "--channels-last,--compile"}
flow = [r for r in rows if r["stage"] == "flow" and r.get("samples_per_s")]
if "compile" in best["variant"] and not any("compile" in r["variant"] for r in flow):
    best = max((r for r in vae if "compile" not in r["variant"]), key=lambda r: r["samples_per_s"])  # one flag: both stages
print(opts[best["variant"]] or "none", best["samples_per_s"], max(r["samples_per_s"] for r in flow))
PY
)"
  spent=$(( ($(date +%s) - t0) / 60 ))
  M=${TRAIN_MINUTES:-21}; SHARE=${VAE_SHARE:-0.72}
  VAE_STEPS=$(python3 -c "print(int($VAE_RATE * 0.92 * 60 * $M * $SHARE / 256))")
  FLOW_STEPS=$(python3 -c "print(int($FLOW_RATE * 0.8 * 60 * $M * (1 - $SHARE - 0.04) / 1024))")
  OPTS=$([ "$VAE_OPTS" = none ] || echo "$VAE_OPTS" | tr ',' ' ')
  echo "setup took ${spent} min; VAE $VAE_RATE/s -> $VAE_STEPS steps; flow $FLOW_RATE/s -> $FLOW_STEPS steps; options: $OPTS"
  # a simple command (not `cd && ...`) so that no subshell keeps this call's stdout open for the whole run
  cd $R || exit 1
  setsid nohup env PYTHONPATH=$R/code:/tmp/site python3 -m gpsk_materials.training --data $R/pool/data.npz --out $R/run \
      --model ${MODEL:-default} --init-weights ${INIT:-$R/code/gpsk_materials/weights/default} --max-minutes $M --export-minutes 3 --vae-steps $VAE_STEPS --flow-steps $FLOW_STEPS \
      --batch-size 256 --flow-batch-size 1024 --vae-lr ${VAE_LR:-4e-4} --flow-lr ${FLOW_LR:-3e-4} --warmup-steps ${WARMUP:-200} --log-every 50 \
      --eval-every 500 --ckpt-every 2000 --compact-checkpoints --device cuda --no-progress $OPTS ${EXTRA:-} \
      > $R/train.log 2>&1 < /dev/null &
  sleep 45; cd - >/dev/null; report
elif [ "$mode" = judge ]; then
  for r in ${RUNS:-a b}; do while pgrep -f "gpsk_materials.training --data /tmp/campaign_$r" >/dev/null; do sleep 5; done; done
  mkdir -p /tmp/sh/data/mp20 /tmp/judge && cp .carry/eval/test.csv /tmp/sh/data/mp20/
  for r in ${RUNS:-a b}; do M=/tmp/campaign_$r/run/export
    cp /tmp/campaign_$r/run/metrics.jsonl /tmp/judge/metrics_$r.jsonl; cp /tmp/campaign_$r/train.log /tmp/judge/train_$r.log
    cp $M/config.json /tmp/judge/export_config_$r.json
    GPSK_SHARED_DIR=/tmp/sh PYTHONPATH=$PWD:/tmp/site MPLBACKEND=Agg python3 benchmarks/csp.py --model $M --device cuda \
      --limit 200 --k 1 --workers 3 --out /tmp/judge/csp_$r.json > /tmp/judge/csp_$r.log 2>&1 &
    GPSK_SHARED_DIR=/tmp/sh PYTHONPATH=$PWD:/tmp/site MPLBACKEND=Agg python3 benchmarks/latent_statistics.py --model $M \
      --device cuda --n 40 --workers 2 --out /tmp/judge/lat_$r.json > /tmp/judge/lat_$r.log 2>&1 &
    [ -z "${REC:-}" ] || GPSK_SHARED_DIR=/tmp/sh PYTHONPATH=$PWD:/tmp/site MPLBACKEND=Agg python3 \
      benchmarks/vae_reconstruction.py --model $M --n 100 --n-formula 40 --device cuda --workers 3 \
      --out /tmp/judge/vae_$r.json --per-structure /tmp/judge/vae_$r.csv > /tmp/judge/vae_$r.log 2>&1 &
    GPSK_SHARED_DIR=/tmp/sh PYTHONPATH=$PWD:/tmp/site MPLBACKEND=Agg python3 benchmarks/latent_smoothness.py --model $M \
      --device cuda --n 40 --out /tmp/judge/smooth_$r.json > /tmp/judge/smooth_$r.log 2>&1 &
  done
  wait
  for f in /tmp/judge/*.log; do echo "== $f"; tail -n 3 $f | cut -c1-400; done
  best=$(RUNS="${RUNS:-a b}" python3 -c "
import json, os
r = {m: json.load(open(f'/tmp/judge/csp_{m}.json')) for m in os.environ['RUNS'].split()}
print(max(r, key=lambda m: (r[m]['match_rate_1'], r[m]['decoded'])))")
  echo "best CSP: run $best"; tar -C /tmp/judge -cf $OUT/results.tar .
  # every run's export comes back when they fit (8 files, 64 MiB); otherwise the best run's alone
  size=0; for r in ${RUNS:-a b}; do size=$((size + $(du -sm /tmp/campaign_$r/run/export | cut -f1))); done
  if [ "${EXPORTS:-all}" = all ] && [ "$size" -le 56 ]; then keep="${RUNS:-a b}"; else keep=$best; fi
  for r in $keep; do tar -C /tmp/campaign_$r/run -cf - export | split -b 15M - $OUT/export_$r.tar.part-; done
  ls -la $OUT
elif [ "$mode" = wait ]; then
  while pgrep -f "gpsk_materials.training --data $R" >/dev/null; do sleep 5; done
  report
else
  sleep ${POLL_SLEEP:-0}; report
fi
