# Device-tool run: Nsight Compute (full set, source lines) on one sparse-core kernel of a JORA-diag+OER layer at
# T=8192, d=4096, bf16; prints throughput, occupancy, stall reasons and the source lines with the most stall
# samples.  bash benchmarks/device/run_ncu_kernel.sh [kernel name, default _token_sums_kernel]   ($OUT set)
source benchmarks/device/setup.sh
KERNEL=${1:-_token_sums_kernel}
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout 240 $NCU --clock-control none --kernel-name regex:"^$KERNEL" --launch-skip 2 --launch-count 1 \
  --set full --import-source yes -o $OUT/ncu_kernel python benchmarks/gpu_ncu_target.py jora_diag_oer > $OUT/ncu.log 2>&1
echo "ncu rc=$?"
$NCU --import $OUT/ncu_kernel.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
$NCU --import $OUT/ncu_kernel.ncu-rep --page source --csv > $OUT/ncu_source.csv 2>&1
grep -E "Duration|DRAM Throughput|Memory Throughput|L1/TEX Hit|L2 Hit|Achieved Occupancy|Theoretical Occupancy|Registers Per|Eligible Warps|Issued Warp|No Eligible|Waves Per SM|Block Limit" $OUT/ncu_details.txt | head -24
grep -iE "stall|bottleneck|est. speedup" $OUT/ncu_details.txt | cut -c1-220 | head -16
python - "$OUT/ncu_source.csv" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1], errors="replace")))
head = next((i for i, r in enumerate(rows) if r and r[0] in ("#", "Line", "# Address", "Address")), 0)
names = rows[head]
print("columns:", [n for n in names][:14])
key = next((i for i, n in enumerate(names) if "Sampling Data (All)" in n or "Warp Stall Sampling (All" in n), None)
src = next((i for i, n in enumerate(names) if n.lower() in ("source", "source code")), 1)
if key is not None:
    body = [r for r in rows[head + 1:] if len(r) > key and r[key].replace(".", "").isdigit()]
    body.sort(key=lambda r: -float(r[key]))
    for r in body[:14]:
        print(f"{r[key]:>8s}  {r[0]:>5s}  {r[src].strip()[:150]}")
PY
