#!/usr/bin/env bash
# Short GPU comparison of two model folders on the lent device (issue 13/14 measurements, ~40 s each):
# CSP (benchmarks/csp.py) and VAE reconstruction (benchmarks/vae_reconstruction.py) for C6 (the candidate, carried as
# .carry/eval/c6) and C5 (the shipped folder). Carry .whl (wheels the image lacks, incl. smact, tabulate, ase) and
# .carry/eval (mp20 test.csv + the candidate folder). Settings: CAND, BASE (the two folders), NOREC=1 (CSP only),
# NREC, WAIT, MODELS (name:folder pairs, replacing CAND/BASE).
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
mkdir -p /tmp/sh/data/mp20 && cp .carry/eval/test.csv /tmp/sh/data/mp20/
export GPSK_SHARED_DIR=/tmp/sh PYTHONPATH=$PWD:/tmp/site MPLBACKEND=Agg PYTHONUNBUFFERED=1
C5=${BASE:-gpsk_materials/weights/default}; C6=${CAND:-.carry/eval/c6}
python3 -c "import smact, pymatgen.core, spglib; print('imports ok')" || exit 1
# MODELS: name:folder pairs to compare (default the candidate and the shipped folder)
for pair in ${MODELS:-c6:$C6 c5:$C5}; do m=${pair%%:*}; M=${pair#*:}
  python3 benchmarks/csp.py --model $M --device cuda --limit ${LIMIT:-200} --k ${K:-1} --workers 3 --out $OUT/csp_$m.json > $OUT/csp_$m.log 2>&1 &
  [ -n "${NOREC:-}" ] || python3 benchmarks/vae_reconstruction.py --model $M --n ${NREC:-100} --n-formula 40 --device cuda --workers 3 \
     --out $OUT/vae_$m.json --per-structure $OUT/vae_$m.csv > $OUT/vae_$m.log 2>&1 &
done
timeout ${WAIT:-230} bash -c 'while [ $(jobs -r | wc -l) -gt 0 ] || pgrep -f "benchmarks/(csp|vae_rec)" >/dev/null; do sleep 3; done'
nvidia-smi --query-gpu=memory.used --format=csv,noheader
for f in $OUT/*.log; do echo "== $f"; tail -n 4 $f | cut -c1-300; done
