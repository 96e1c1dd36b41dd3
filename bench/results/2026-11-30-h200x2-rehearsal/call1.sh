# Call 1 (nvidia-h200-x2): GPU 0 the rehearsal's setup, then generate.compile model cold and warm;
# GPU 1 the prompt costs (issue 16), then training compiled cold and warm (batch 4: also the 1-GPU training row).
source .device/setup.sh || exit 1
R=/tmp/res1; rm -rf $R; mkdir -p $R
GC="bench/bench_generate.py --impl ours --modes lora --compile model --stories 1"
TR="bench/bench_train.py --impl ours --batch-sizes 4 --compile blocks --compile-mode reduce-overhead --steps 10"
( export CUDA_VISIBLE_DEVICES=0
  timeout 200 python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh --phases setup > $R/setup.log 2>&1; echo "setup rc=$?"
  timeout 250 python3 $GC --out $R/gen-compile-cold.json > $R/gc-cold.log 2>&1; echo "gen cold rc=$?"
  timeout 150 python3 $GC --out $R/gen-compile-warm.json > $R/gc-warm.log 2>&1; echo "gen warm rc=$?" ) &
( export CUDA_VISIBLE_DEVICES=1
  timeout 150 python3 bench/bench_prompts.py --out $R/prompts.json > $R/prompts.log 2>&1; echo "prompts rc=$?"
  timeout 200 python3 $TR --out $R/train-cold.json > $R/train-cold.log 2>&1; echo "train cold rc=$?"
  timeout 120 python3 $TR --out $R/train-warm.json > $R/train-warm.log 2>&1; echo "train warm rc=$?" ) &
wait
tar czf $OUT/call1.tgz -C $R .
for f in $R/*.json $R/rh/*.json; do echo "== $f"; head -c 1500 $f; echo; done
