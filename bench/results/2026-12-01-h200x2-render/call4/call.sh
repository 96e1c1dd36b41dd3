# Call 4 (both GPUs): the render measurement again (baseline and ref_guided), 1 GPU (GPU 1 this time) then 2.
source .device/setup.sh > /dev/null 2>&1 || exit 1
R=$OUT; nvidia-smi --query-gpu=index,clocks.sm,clocks.max.sm,utilization.gpu,memory.used,temperature.gpu,power.draw --format=csv > $R/smi-before.txt
G="bench/bench_generate.py --impl ours --modes baseline,ref_guided --frames 8 --stories 3 --frames-per-batch 4 --warmup-steps 1 --workdir /tmp/w"
CUDA_VISIBLE_DEVICES=1 timeout 170 python3 $G --out $R/generate-1gpu.json > $R/generate-1gpu.log 2>&1; echo "1gpu rc=$? at $SECONDS s"
nvidia-smi --query-gpu=index,clocks.sm,clocks.max.sm,utilization.gpu,memory.used,temperature.gpu,power.draw --format=csv > $R/smi-between.txt
timeout 170 python3 -m torch.distributed.run --standalone --nproc_per_node 2 $G --out $R/generate-2gpu.json > $R/generate-2gpu.log 2>&1; echo "2gpu rc=$? at $SECONDS s"
cat $R/smi-before.txt; grep -h "s/frame" $R/*.log
