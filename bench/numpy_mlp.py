"""NumPy peer of the reference trainer's benchmark (shared/benches/trainer.rs).

Trains the MNIST-shaped MLP 784-128(relu)-10 with softmax cross-entropy in float32, minibatches of 64
gathered from 7,000 random samples by a shuffled index list, plain SGD: forward, backward and update,
exactly the work `Trainer::train_local` does. Prints one line: `numpy samples/s: <value>`.

Run it without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the environment (the Rust bench removes them
for this process only): on some machines they force a slower OpenBLAS kernel, which would make the
comparison unfair to NumPy. Set OPENBLAS_NUM_THREADS=1 to compare with the single-threaded Rust trainer.
"""

import sys
import time

import numpy as np


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 3.0
    rng = np.random.default_rng(0)
    n, batch, lr = 7000, 64, np.float32(0.01)
    x_all = rng.random((n, 784), dtype=np.float32)
    y_all = rng.integers(0, 10, n)
    lim1, lim2 = np.sqrt(6 / 784), np.sqrt(6 / (128 + 10))
    w1 = rng.uniform(-lim1, lim1, (784, 128)).astype(np.float32)
    b1 = np.zeros(128, np.float32)
    w2 = rng.uniform(-lim2, lim2, (128, 10)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    order = rng.permutation(n)

    def step(s):
        nonlocal w1, b1, w2, b2
        idx = order[(s * batch + np.arange(batch)) % n]
        x, y = x_all[idx], y_all[idx]
        h = x @ w1
        h += b1
        np.maximum(h, 0, out=h)
        z = h @ w2
        z += b2
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        s_ = e.sum(axis=1, keepdims=True)
        loss = float(np.mean(np.log(s_[:, 0]) - z[np.arange(batch), y]))
        g = e / s_
        g[np.arange(batch), y] -= 1
        g /= batch
        dw2 = h.T @ g
        db2 = g.sum(axis=0)
        dh = g @ w2.T
        dh[h <= 0] = 0
        dw1 = x.T @ dh
        db1 = dh.sum(axis=0)
        w1 -= lr * dw1
        b1 -= lr * db1
        w2 -= lr * dw2
        b2 -= lr * db2
        return loss

    for s in range(50):
        step(s)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for _ in range(50):
            step(steps)
            steps += 1
    elapsed = time.perf_counter() - start
    print(f"numpy samples/s: {steps * batch / elapsed:.0f}")


if __name__ == "__main__":
    main()
