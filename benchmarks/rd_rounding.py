"""Trial: plain rounding against RD-optimised rounding (tica.entropy.rdo) at several lambdas,
real streams at every standard quality.
    python benchmarks/rd_rounding.py tica-cifar ../shared/data/cifar10-jpeg.tar.gz THREADS LIMIT 64,32,16,8
"""
import sys, json, torch
from tica import api
from tica.evaluate import eval_data, evaluate_curve
sys.path.insert(0, "tools")
from tica_tools.rd import curve_verdict
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
name, source = sys.argv[1], sys.argv[2]
lams = [None] + [float(v) for v in sys.argv[5].split(",")]
model = api.load(name)
data = eval_data(source, limit=int(sys.argv[4]) if len(sys.argv) > 4 else 1000)
curves = {}
for lam in lams:
    model.rd_lambda = lam
    rows = [{"quality": r.quality, "bpp": r.bpp, "psnr": r.psnr, "top1": r.top1} for r in evaluate_curve(model, data)]
    curves[str(lam)] = rows
    v = curve_verdict(curves["None"], rows) if lam is not None else {}
    print(lam, [(r["quality"], round(r["bpp"], 4), round(r["psnr"], 2), r["top1"]) for r in rows], v, flush=True)
json.dump(curves, open(f"/tmp/rdo_{name}_{data.name}.json", "w"))
