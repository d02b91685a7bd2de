# Device-tool run: the layer and model tables of PERFORMANCE.md, host time per call and the torch.compile check.
# bash benchmarks/device/run_tables.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/gpu_state.txt
lscpu | grep -E "Model name|MHz" > $OUT/cpu.txt
timeout 570 python benchmarks/gpu_tables.py --out $OUT --sections layers,model,host,compile > $OUT/tables.log 2>&1; echo "tables rc=$?"
grep -E "section" $OUT/tables.log
grep -E "^\| (8192|32768) \| 4096 \|" $OUT/gpu_results.md
sed -n '/## Model/,/## Host/p' $OUT/gpu_results.md
sed -n '/## Host/,/## torch/p' $OUT/gpu_results.md
