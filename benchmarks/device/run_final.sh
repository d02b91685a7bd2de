# Device-tool run: GPU tests of the Triton paths, the determinism check, then every table (correctness, layers with wall and device
# time, model, host, torch.compile).  bash benchmarks/device/run_final.sh   (repository root, $OUT set)
source benchmarks/device/setup.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,temperature.gpu,power.draw --format=csv > $OUT/gpu_state.txt
lscpu | grep -E "Model name|MHz" > $OUT/cpu.txt
JORA_COMPILE=0 timeout 90 python -m pytest -q -x -p no:cacheprovider tests/ops/test_gpu.py tests/ops/test_sparse_core_triton.py -k "gpu or many or scale" > $OUT/pytest.log 2>&1; echo "pytest rc=$?"; tail -2 $OUT/pytest.log
timeout 60 python benchmarks/gpu_determinism_check.py > $OUT/ticket.txt 2>&1; echo "ticket rc=$?"; tail -3 $OUT/ticket.txt
timeout 480 python benchmarks/gpu_tables.py --out $OUT --sections correctness,layers,model,host,compile > $OUT/tables.log 2>&1; echo "tables rc=$?"
grep -E "section" $OUT/tables.log
grep -E "^\| (8192|32768) \| 4096 \| (frozen|lora_r16|jora_diag_oer|jora_diag|jora_block_oer)" $OUT/gpu_results.md
sed -n '/## Model/,/## Host/p' $OUT/gpu_results.md
sed -n '/## Host/,/## torch/p' $OUT/gpu_results.md
