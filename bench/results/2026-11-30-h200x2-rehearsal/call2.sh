# Call 2: the first `dvc repro` on one GPU (GPU 0 only visible: storyboard.launch runs one process per stage).
source .device/setup.sh > /dev/null 2>&1 || { echo setup failed; exit 1; }
export CUDA_VISIBLE_DEVICES=0
R=/tmp/res2; rm -rf $R; mkdir -p $R
timeout 578 python3 bench/rehearse.py --workdir /tmp/rh --models /tmp/hub --out $R/rh --phases first > $R/first.stdout 2>&1; echo "first rc=$?"
tar czf $OUT/call2.tgz -C $R .
python3 -c "
import json; d=json.load(open('$R/rh/rehearse.json')); f=d.get('first',{})
print(f.get('wall_s'), f.get('rc'), [(s['stage'], s.get('wall_s'), s.get('peak_gpu_mib')) for s in f.get('stages',[])])"
grep -E "Running stage|ERROR|Error|Traceback" $R/rh/first.log | tail -20
