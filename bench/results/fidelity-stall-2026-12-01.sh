export NCCL_NVLS_ENABLE=0 LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
B=build-dbg/computron
S=build-dbg/serve-3m-tp1-cv4-32tok-seed2.json
cat > /tmp/an.py <<'PY'
import json,sys
t=json.load(open(sys.argv[1]))
ev=t['traceEvents'] if isinstance(t,dict) else t
names={}
for e in ev:
    if e.get('ph')=='M' and e.get('name')=='thread_name': names[(e['pid'],e['tid'])]=e['args']['name']
spans=sorted([e for e in ev if e.get('ph')=='X'], key=lambda e:e['ts'])
loads=[e for e in spans if names.get((e['pid'],e['tid']),'').startswith('loads')]
comp=[e for e in spans if names.get((e['pid'],e['tid']))=='compute']
started_in=[];before=[];alone=[]
for c in comp:
    s,d=c['ts'],c['dur']
    inl=[l for l in loads if l['ts']<s<l['ts']+l['dur']]
    ov=[l for l in loads if l['ts']<s+d and l['ts']+l['dur']>s]
    tag='start-in-load' if inl else ('overlap' if ov else 'alone')
    print("  %-10s %9.1f %7.1f ms %s%s"%(c['name'],s/1e3,d/1e3,tag, (" load ends +%.1f ms"%((inl[0]['ts']+inl[0]['dur']-s)/1e3)) if inl else ""))
PY
for cfg in default conn32 conn1; do
  case $cfg in default) E="";; conn32) E="CUDA_DEVICE_MAX_CONNECTIONS=32";; conn1) E="CUDA_DEVICE_MAX_CONNECTIONS=1";; esac
  echo "=== $cfg ($E)"
  env $E timeout 150 $B replay $S --device cuda --execution real --host-memory-gib 100 -o /tmp/st-$cfg -q > /tmp/st-$cfg.log 2>&1; echo "exit $?"
  python3 /tmp/an.py /tmp/st-$cfg/timeline.json
  grep -E "^all" /tmp/st-$cfg.log || tail -3 /tmp/st-$cfg.log
done
