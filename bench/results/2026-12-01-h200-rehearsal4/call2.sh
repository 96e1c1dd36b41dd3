# Call 2: wait for the rehearsal, then everything back as one tgz.
source .device/setup.sh > /dev/null 2>&1
R=/tmp/res
while [ ! -f $R/done ] && [ $SECONDS -lt 560 ]; do sleep 5; done
echo "rehearsal rc=$(cat $R/done 2>/dev/null) at $SECONDS s"
tar czf $OUT/rehearsal.tgz -C $R .
python3 - <<P
import json; d=json.load(open('$R/rh/rehearse.json'))
for p in ('first','exp','noop'):
    f=d.get(p,{}); print(p, f.get('wall_s'), f.get('rc'), [(s['stage'], s.get('wall_s'), s.get('peak_gpu_mib')) for s in f.get('stages',[])])
P
grep -hE "models ready|loaded in|ready in|ERROR|Traceback" $R/rh/*.log | cut -c1-160 | tail -30
