#!/usr/bin/env bash
# Every MMDiT row of docs/families.md and the model card's evaluation, on one toy MMDiT pipeline.
#   scripts/mmdit_rows.sh out/mm-rows                                   # the shipped weights/toy-mmdit
#   M=.cache/toy-mmdit-l4/pipeline scripts/mmdit_rows.sh out/mm-l4      # another toy MMDiT
#   SKIP_EVAL=1 scripts/mmdit_rows.sh out/mm-rows     # without the model card's evaluation (~9 min)
# About 40 min on 2 CPU cores, one command at a time (times in OUT/times.log); results: uce.json,
# esd.json, slider.json (the docs' 4-prompt protocol), audit-*/, eval.json, ss-report.json.
set -euo pipefail
OUT=${1:?usage: scripts/mmdit_rows.sh OUT_DIR   (M=MODEL_DIR to measure another toy MMDiT)}
M=${M:-weights/toy-mmdit}
cd "$(dirname "$0")/.."   # M and OUT are relative to the repository root
[ -f "$M/model_index.json" ] || { echo "error: $M is not a diffusers pipeline directory; set M=DIR" >&2; exit 2; }
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$OUT"
export CONCEPT_EDIT_THREADS=${CONCEPT_EDIT_THREADS:-2} HF_HUB_OFFLINE=1
step() { local name=$1; shift; local t=$(date +%s); echo "== $name" >&2
         "$@" > "$OUT/$name.log" 2>&1; echo "$name $(( $(date +%s) - t )) s" >> "$OUT/times.log"; }
ERASE=(--seeds 64 --n-target 2 --n-other 4 --n-retain 6 --out "$OUT")
step uce $PY scripts/toy_quality.py uce --model "$M" "${ERASE[@]}" \
    --config configs/uce/mmdit-erase-circle.yaml configs/uce/erase-red.yaml configs/uce/erase-striped.yaml
step esd $PY scripts/toy_quality.py esd --model "$M" "${ERASE[@]}" \
    --config configs/esd/mmdit-circle-x.yaml configs/esd/toy-circle-x.yaml
step slider $PY scripts/toy_quality.py slider --model "$M" --seeds 64 --slider-prompts 4 --out "$OUT" \
    --config configs/sliders/mmdit-size-pairs.yaml configs/sliders/mmdit-size.yaml configs/sliders/toy-size.yaml
for e in uce-mmdit-erase-circle esd-mmdit-circle-x; do
    step "audit-$e" $PY -m concept_edit.cli.main audit --model "$M" --edit "$OUT/$e.safetensors" \
        --concept configs/audit/circle.yaml --probes standard,inversion --budget full --report "$OUT/audit-$e"
done
[ -n "${SKIP_EVAL:-}" ] || step eval $PY -m concept_edit.cli.main toyworld evaluate --model "$M" --seeds 64 --max-prompts 64 --out "$OUT/eval.json"
step ss $PY -m concept_edit.cli.main sliderspace discover --model "$M" --prompt "a square" --report-seeds 0 \
    --out "$OUT/ss-square"
step ss-report $PY -m concept_edit.cli.main sliderspace report "$OUT/ss-square" --model "$M" --seeds 16 \
    --out "$OUT/ss-report.json"
echo "done: $OUT (times.log)"
