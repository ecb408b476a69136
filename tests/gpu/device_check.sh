#!/bin/bash
# The GPU check (tests/gpu/README.md): onnxruntime-gpu (CUDA 13) in the image's Python, our
# dependencies beside it, then the model suites with the CUDA provider available.
set -uo pipefail
G=/tmp/g
cp .gpuw/p3/ortpart.3 "$G/"
echo "sha256 $(cat $G/ortpart.0 $G/ortpart.1 $G/ortpart.2 $G/ortpart.3 | sha256sum)"
SP=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
python3 -m pip uninstall -y -q onnxruntime 2>&1 | tail -1
unxz() { if command -v xz >/dev/null; then xz -d -T4; else python3 -c "import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)"; fi; }
cat $G/ortpart.0 $G/ortpart.1 $G/ortpart.2 $G/ortpart.3 | unxz | tar xf - -C "$SP" || exit 3
python3 -m pip install -q --no-index --no-deps --no-compile $G/deps/*.whl 2>&1 | tail -2
nvidia-smi -L
python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
python3 -m pytest -q -p no:cacheprovider -ra \
  tests/integration/test_models_gpu.py tests/unit/test_engine_providers.py \
  tests/integration/test_models.py tests/unit/test_engine_inline.py 2>&1 | tee "$OUT/pytest.log"
python3 - <<'PY' 2>&1 | tee "$OUT/timing.txt"
# The same dense model on both providers through the engine's own choice of providers.
import time, numpy as np, onnxruntime as ort
from infrastructure.models.engine import providers
from tests.integration.test_models_support import dense_onnx
content, reference = dense_onnx(n_in=1024, n_out=1024, seed=3)
x = np.random.default_rng(1).standard_normal((256, 1024)).astype(np.float32)
for mode, tf32 in (("cpu", False), ("auto", False), ("auto", True)):
    s = ort.InferenceSession(content, providers=providers(mode, tf32=tf32))
    name = s.get_inputs()[0].name
    for _ in range(5): out = s.run(None, {name: x})[0]
    t = time.perf_counter(); n = 50
    for _ in range(n): out = s.run(None, {name: x})[0]
    dt = (time.perf_counter() - t) / n
    err = float(np.abs(out - reference(x)).max())
    print(f"{mode} tf32={tf32}: providers={s.get_providers()} run={dt*1e3:.3f} ms max_abs_err={err:.2e}")
PY
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
