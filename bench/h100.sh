#!/usr/bin/env bash
# The GPU benchmark on a machine with an NVIDIA GPU and PyTorch, in one go, on prebuilt x86_64 binaries:
# the engine's correctness tests there, `gpu_bench` (engine vs reference trainer) and `torch_bench.py`
# (PyTorch CUDA, float32, TF32 off) on the same card. Nothing is installed; the Vulkan loader comes as a
# .deb unpacked from `.gl/` when the machine lacks it.
#
# Build here first:
#   cargo build --release -p daig-provider --example gpu_bench
#   cargo test --release -p daig-provider --no-run   # the test binaries `gpu-*`, `gpu_train-*`, `engine-*`
#   mkdir -p .devbin && cp target/release/examples/gpu_bench target/release/deps/{gpu,gpu_train,engine}-* .devbin/
# then run `bash bench/h100.sh` on the GPU machine with `.devbin` (and `.gl`) beside it.
set -u
out="${OUT:-/tmp/daig-bench}"
mkdir -p "$out"
# The Vulkan loader and glvnd (the NVIDIA ICD needs them), from Debian's packages carried in `.gl/`.
for f in .gl/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES="$icd"
export VK_LOADER_DEBUG=error
nvidia-smi -L 2>&1 | tee "$out/gpu.txt"
echo "== engine tests on this GPU" | tee "$out/tests.txt"
# The MNIST test needs ../shared/data, which does not travel: skip it there.
for t in .devbin/gpu-* .devbin/gpu_train-* .devbin/engine-*; do
    [ -x "$t" ] && "$t" --skip mnist 2>&1 | tail -12 | tee -a "$out/tests.txt"
done
echo "== engine benchmark"
.devbin/gpu_bench --sweep 2>&1 | tee "$out/engine.txt"
echo "== PyTorch"
PYTHONUNBUFFERED=1 python3 bench/torch_bench.py 2>&1 | tee "$out/torch.txt"
