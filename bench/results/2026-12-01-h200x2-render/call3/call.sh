# Call 3 (both GPUs): an 8-frame x 3-story render of each mode on 1 GPU, then on 2 (frame batches shared).
source .device/setup.sh > /dev/null 2>&1 || exit 1
R=/tmp/res3; rm -rf $R; mkdir -p $R
G="bench/bench_generate.py --impl ours --modes baseline,lora,ref_guided --frames 8 --stories 3 --frames-per-batch 4 --warmup-steps 1 --workdir /tmp/w"
CUDA_VISIBLE_DEVICES=0 timeout 230 python3 $G --out $R/generate-1gpu.json > $R/generate-1gpu.log 2>&1; echo "1gpu rc=$? at $SECONDS s"
timeout 300 python3 -m torch.distributed.run --standalone --nproc_per_node 2 $G --out $R/generate-2gpu.json > $R/generate-2gpu.log 2>&1; echo "2gpu rc=$? at $SECONDS s"
tar czf $OUT/render.tgz -C $R .
grep -h "s/frame" $R/*.log
