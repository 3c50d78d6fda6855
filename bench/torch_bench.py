"""PyTorch peer of `cargo run --release -p daig-provider --example gpu_bench`, on the same card.

Float32 with TF32 off. Matmul kernel time from CUDA events, apart from upload (host to device) and readback;
training samples/s of the same MLP and convnet at batch 64 and 256, 8 SGD steps per call followed by the
parameter delta read back to the host, as the DAIG engine does per contribution.

    python3 bench/torch_bench.py [--quick]
"""
import sys
import time

import torch

torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False
torch.set_float32_matmul_precision("highest")


def timed(budget, min_runs, fn):
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - start < budget:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 1000:
            break
    times.sort()
    return times[len(times) // 2]


def main():
    quick = "--quick" in sys.argv
    budget = 0.3 if quick else 2.0
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, TF32 off")
    print("| benchmark | PyTorch CUDA |")
    print("|---|---|")
    for n in ([256, 1024] if quick else [256, 1024, 4096]):
        a_host = torch.rand(n, n).pin_memory()
        b_host = torch.rand(n, n).pin_memory()
        a = a_host.to(dev)
        b = b_host.to(dev)
        c = torch.empty(n, n, device=dev)

        def upload():
            a.copy_(a_host)
            b.copy_(b_host)
            torch.cuda.synchronize()

        up = timed(budget, 3, upload)
        reps = max(1, min(64, -(-(1 << 33) // (n ** 3))))

        def kernel():
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                torch.mm(a, b, out=c)
            end.record()
            end.synchronize()
            kernel.ms = start.elapsed_time(end) / reps

        kt = []
        for _ in range(10 if not quick else 3):
            kernel()
            kt.append(kernel.ms)
        kt.sort()
        ms = kt[len(kt) // 2]
        rb = timed(budget, 3, lambda: c.cpu())
        gflops = 2 * n ** 3 / (ms / 1e3) / 1e9
        print(f"| matmul {n}^3 GFLOP/s (kernel; upload {up * 1e3:.2f} ms, readback {rb * 1e3:.2f} ms) | {gflops:.1f} |")

    def mlp():
        return torch.nn.Sequential(torch.nn.Linear(784, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))

    def convnet():
        return torch.nn.Sequential(
            torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(8, 16, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(16 * 5 * 5, 10))

    for name, make, shape in [("MNIST MLP 784-128-10", mlp, (784,)), ("convnet 8c3-p2-16c3-p2-10", convnet, (1, 28, 28))]:
        for batch in (64, 256):
            model = make().to(dev)
            steps = 8
            samples = batch * steps
            x = torch.rand(samples, *shape, device=dev)
            y = torch.randint(0, 10, (samples,), device=dev)
            opt = torch.optim.SGD(model.parameters(), lr=0.01)
            loss_fn = torch.nn.CrossEntropyLoss()

            def call():
                start = [p.detach().clone() for p in model.parameters()]
                for s in range(steps):
                    xb = x[s * batch:(s + 1) * batch]
                    yb = y[s * batch:(s + 1) * batch]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(model(xb), yb)
                    loss.backward()
                    opt.step()
                delta = torch.cat([(p.detach() - s0).flatten() for p, s0 in zip(model.parameters(), start)])
                delta.cpu()

            t = timed(budget, 3, call)
            print(f"| {name} train samples/s, batch {batch} ({steps} local steps per call, delta read back) | {samples / t:.0f} |")


if __name__ == "__main__":
    main()
