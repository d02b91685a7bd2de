# Device-tool run: Nsight Compute on the four sparse-core kernels at T=8192, d=4096 (bf16, diag+OER), then the
# quick layer table (wall and device time) and the host table.  bash benchmarks/device/run_ncu_and_quick.sh
source benchmarks/device/setup.sh
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1)
timeout 240 $NCU --clock-control none --kernel-name regex:"^_(fold|token_sums|coordinate_grads|slot_grads)_kernel" \
  --launch-skip 8 --launch-count 4 --section SpeedOfLight --section MemoryWorkloadAnalysis --section Occupancy \
  --section LaunchStats --section WarpStateStats --section SchedulerStats -o $OUT/ncu_diag_oer \
  python benchmarks/gpu_ncu_target.py jora_diag_oer > $OUT/ncu.log 2>&1; echo "ncu rc=$?"
$NCU --import $OUT/ncu_diag_oer.ncu-rep --page details > $OUT/ncu_details.txt 2>&1
grep -E "_kernel|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Registers Per|Theoretical Occ|Block Limit" $OUT/ncu_details.txt | head -60
mkdir -p $OUT/quick; timeout 200 python benchmarks/gpu_tables.py --out $OUT/quick --sections layers,host --quick > $OUT/quick.log 2>&1; echo "quick rc=$?"
grep -E "^\| (8192|frozen|lora|jora)" $OUT/quick/gpu_results.md
