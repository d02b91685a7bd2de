# Device-tool run: the backward's ∂L/∂x matmul on a second stream beside the token sums. The GPU tests named by
# PYTEST_K, then the knob sets given (JSON) A/B'd in one process each on the layer rows (SHAPES, METHODS) and on
# the model's JORA-diag+OER row (MODEL_ROUNDS); HOST=1: first the host time per call with the second stream
# forced on and off.
#   bash benchmarks/device/run_overlap.sh '{}' '{"OVERLAP_MIN_ELEMENTS": null}'
source benchmarks/device/setup.sh
if [ -n "$PYTEST_K" ]; then
  timeout "${PYTEST_TIMEOUT:-200}" python -m pytest -q -p no:cacheprovider tests -k "$PYTEST_K" > $OUT/pytest.txt 2>&1
  echo "pytest rc=$?"; tail -5 $OUT/pytest.txt
fi
if [ -n "$HOST" ]; then  # host time per call at a tiny shape, the second stream forced on and off
  timeout 120 python benchmarks/gpu_layer_ab.py '{"OVERLAP_MIN_ELEMENTS": null}' '{"OVERLAP_MIN_ELEMENTS": 0}' --host \
    --shapes 16x4096 --methods "${METHODS:-jora_diag_oer}" > $OUT/host_ab.txt 2>&1
  echo "host ab rc=$?"; grep -v -i warn $OUT/host_ab.txt
fi
timeout 240 python benchmarks/gpu_layer_ab.py "$@" --shapes "${SHAPES:-8192x4096,8192x2048}" \
  --methods "${METHODS:-jora_diag_oer}" > $OUT/ab.txt 2>&1
echo "layer ab rc=$?"; grep -v -i warn $OUT/ab.txt
timeout 200 python benchmarks/gpu_model_ab.py "$@" --floor --rounds "${MODEL_ROUNDS:-3}" > $OUT/model_ab.txt 2>&1
echo "model ab rc=$?"; grep -v -i warn $OUT/model_ab.txt
