#!/usr/bin/env bash
# The renderer's screening call: shipped defaults against plain batched diffusers, then each kernel knob and the
# compiled paths (cold, then warm from the cache the cold run left), in one device call of at most 10 minutes.
#   OUT=results_dir bash bench/render_matrix.sh
# Each step gets what is left of the deadline, so a slow step costs the ones after it, not the whole call.
set -u
out=${OUT:?set OUT to the results folder}
deadline=$((SECONDS + ${BUDGET_S:-570}))
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/storyboard-inductor}
step() {
  local name=$1; shift
  local left=$((deadline - SECONDS))
  if ((left < 30)); then echo "skipped $name: out of time" | tee -a "$out/skipped.txt"; return; fi
  echo "== $name ($left s left)"
  timeout "$left" python3 bench/bench_generate.py "$@" --out "$out/$name.json" >"$out/$name.log" 2>&1
  echo "   rc=$? $(grep -h 's/frame' "$out/$name.log" | sed 's/.*storyboard: //' | tr '\n' ';')"
}
fast=(--impl ours --warmup-steps 2)
step defaults --impl batched,ours --modes lora,ref_guided
step cudnn "${fast[@]}" --modes lora,ref_guided --attention cudnn
step channels-last "${fast[@]}" --modes lora,ref_guided --channels-last
step fuse-qkv "${fast[@]}" --modes lora --fuse-qkv
step blocks-cold "${fast[@]}" --modes lora --compile blocks
step blocks-warm "${fast[@]}" --modes lora --compile blocks
step blocks-fp8 "${fast[@]}" --modes lora --compile blocks --quantize fp8
