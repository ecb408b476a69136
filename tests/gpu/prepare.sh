#!/bin/bash
# Stage what the GPU check needs into .gpuw/p0..p3 (git-ignored), each small enough for one
# device call (64 MiB with the working tree). Run here, from the repo root, where pip can reach
# an index. The device image has Python 3.12, numpy, onnx, scikit-learn, torch and the CUDA 13
# nvidia-* packages; what it lacks goes over as wheels, onnxruntime-gpu (CUDA 13) as xz parts.
set -euo pipefail
ORT=${ORT:-onnxruntime-gpu==1.31.1}
W=$(mktemp -d)
grep -q '^/.gpuw/' .git/info/exclude 2>/dev/null || echo '/.gpuw/' >> .git/info/exclude
PLAT=(--only-binary=:all: --python-version 3.12 --implementation cp --platform any
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64)
python3 -m pip download -q "${PLAT[@]}" -d "$W/deps" \
  "eventsourcing[postgres]==9.5.6" "psycopg[binary]>=3.2,<4" "psycopg-pool>=3.2,<4" msgspec \
  argon2-cffi python-dotenv "litestar>=2.25,<3" "uvicorn[standard]" pyjwt redis stripe \
  "mcp>=2.3,<3" "a2a-sdk>=1.3,<2" "grpclib[protobuf]>=0.4.9,<0.5" betterproto==2.0.0b7 multipart skl2onnx
# what the image has already (KINDS.md's list), and oci (imported only by its storage backend)
for p in aiohappyeyeballs aiohttp aiosignal anyio attrs certifi charset_normalizer click cloudpickle \
  frozenlist h11 httpcore httpx idna joblib markdown_it_py mdurl ml_dtypes multidict numpy onnx \
  packaging propcache protobuf pygments python_dateutil PyYAML pyyaml requests rich scikit_learn \
  scipy six threadpoolctl typing_extensions urllib3 uvloop wrapt yarl narwhals oci faker; do
  rm -f "$W/deps/${p}"-*.whl
done
python3 -m pip download -q --no-deps "${PLAT[@]}" -d "$W/ort" "$ORT"
mkdir -p "$W/x" && (cd "$W/x" && unzip -q "$W"/ort/*.whl && rm -f onnxruntime/capi/libonnxruntime_providers_tensorrt.so)
tar cf - -C "$W/x" . | xz -T0 -6 > "$W/ort.tar.xz"
rm -rf .gpuw && mkdir -p .gpuw/p0 .gpuw/p1 .gpuw/p2 .gpuw/p3
cp -r "$W/deps" .gpuw/p0/
LIMIT=$((60 * 1048576 - $(git ls-files -z | xargs -0 cat | wc -c)))
FIRST=$((LIMIT - $(du -sb .gpuw/p0 | cut -f1)))
python3 - "$W/ort.tar.xz" "$FIRST" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
first = int(sys.argv[2])
rest = -(-(len(data) - first) // 3)
cuts = [0, first, first + rest, first + 2 * rest, len(data)]
for n in range(4):
    with open(f".gpuw/p{n}/ortpart.{n}", "wb") as f:
        f.write(data[cuts[n] : cuts[n + 1]])
PY
cp tests/gpu/device_check.sh .gpuw/p3/
du -sh .gpuw/*
rm -rf "$W"
