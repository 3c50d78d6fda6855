//! GPU kernels against CPU references, on whatever adapter is present (lavapipe in CI).
#![cfg(not(target_arch = "wasm32"))]

mod common;

use common::{gpu, random};

use daig_provider::gpu::matmul::{FusedActivation, Matmul, MatmulTiles};

fn assert_close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    let scale = want.iter().fold(1e-3f64, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (f64::from(*g) - w).abs() / scale;
        assert!(err <= 1e-4, "{what}: element {i}: got {g}, want {w} (relative error {err:e})");
    }
}

#[test]
fn matmul_matches_reference() {
    let gpu = gpu();
    let shapes = [(1, 1, 1), (1, 10, 784), (3, 5, 7), (64, 128, 784), (65, 33, 17), (130, 70, 129)];
    for tiles in
        [MatmulTiles::SMALL, MatmulTiles::LARGE, MatmulTiles { wg_x: 32, wg_y: 8, tm: 4, tn: 8, bk: 8, large: false }]
    {
        for &(m, n, k) in &shapes {
            for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
                for act in
                    [FusedActivation::Linear, FusedActivation::Relu, FusedActivation::Sigmoid, FusedActivation::Tanh]
                {
                    if act != FusedActivation::Linear && (trans_a || trans_b) {
                        continue;
                    }
                    let a = random(m * k, 1 + m as u64);
                    let b = random(k * n, 2 + n as u64);
                    let bias = random(n, 3);
                    let mut want = vec![0f64; m * n];
                    for i in 0..m {
                        for j in 0..n {
                            let mut s = f64::from(bias[j]);
                            for p in 0..k {
                                let av = if trans_a { a[p * m + i] } else { a[i * k + p] };
                                let bv = if trans_b { b[j * k + p] } else { b[p * n + j] };
                                s += f64::from(av) * f64::from(bv);
                            }
                            want[i * n + j] = match act {
                                FusedActivation::Linear => s,
                                FusedActivation::Relu => s.max(0.0),
                                FusedActivation::Sigmoid => 1.0 / (1.0 + (-s).exp()),
                                FusedActivation::Tanh => s.tanh(),
                            };
                        }
                    }
                    let ga = gpu.buffer_from("a", &a).unwrap();
                    let gb = gpu.buffer_from("b", &b).unwrap();
                    let gbias = gpu.buffer_from("bias", &bias).unwrap();
                    let gc = gpu.buffer("c", m * n).unwrap();
                    // Split-K (the k range cut into slices summed by a second kernel) must give the same.
                    let splits = if k >= 17 { 1 + (m + n) as u32 % 3 } else { 1 };
                    let mm = Matmul { trans_a, trans_b, activation: act, splits, ..Matmul::new(m, n, k) };
                    let launches = mm.prepare(&gpu, tiles, &ga, &gb, Some(&gbias), &gc).unwrap();
                    assert_eq!(launches.len(), if splits > 1 { 2 } else { 1 });
                    gpu.run(&launches.iter().collect::<Vec<_>>());
                    let got = pollster::block_on(gpu.read(&gc, m * n)).unwrap();
                    assert_close(
                        &got,
                        &want,
                        &format!("{m}x{n}x{k} ta={trans_a} tb={trans_b} {act:?} {tiles:?} splits {splits}"),
                    );
                }
            }
        }
    }
}

/// Products with a long inner dimension, such as a convolution's kernel gradient (k = batch x output
/// positions): lavapipe ends every loop of an invocation after 65535 iterations in all, so the k range must be
/// cut into slices (split-K) even where no split was asked for.
#[test]
fn matmul_with_a_long_k_matches_reference() {
    let gpu = gpu();
    let (m, n, k) = (9, 8, 40_000);
    let a = random(k * m, 7);
    let b = random(k * n, 8);
    let mut want = vec![0f64; m * n];
    for p in 0..k {
        for i in 0..m {
            for j in 0..n {
                want[i * n + j] += f64::from(a[p * m + i]) * f64::from(b[p * n + j]);
            }
        }
    }
    let ga = gpu.buffer_from("a", &a).unwrap();
    let gb = gpu.buffer_from("b", &b).unwrap();
    let gc = gpu.buffer("c", m * n).unwrap();
    for tiles in [MatmulTiles::SMALL, MatmulTiles::LARGE] {
        let mm = Matmul { trans_a: true, ..Matmul::new(m, n, k) };
        let launches = mm.prepare(&gpu, tiles, &ga, &gb, None, &gc).unwrap();
        gpu.run(&launches.iter().collect::<Vec<_>>());
        let got = pollster::block_on(gpu.read(&gc, m * n)).unwrap();
        assert_close(&got, &want, &format!("{m}x{n}x{k} ta=true {tiles:?}"));
    }
}

#[test]
fn wgpu_errors_come_back_as_errors_not_panics() {
    let gpu = gpu();
    // Inside an error scope: an invalid buffer (mappable for reading and usable as storage) is refused.
    let invalid = || {
        gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("invalid"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::STORAGE,
            mapped_at_creation: false,
        })
    };
    let scoped = pollster::block_on(gpu.checked(|| {
        invalid();
        Ok(())
    }));
    assert!(matches!(scoped, Err(daig_provider::gpu::GpuError::Validation(_))), "{scoped:?}");
    // Outside any scope wgpu would panic by default; the context records it and reports it once.
    invalid();
    let reported = gpu.wait();
    assert!(matches!(reported, Err(daig_provider::gpu::GpuError::Validation(_))), "{reported:?}");
    gpu.wait().unwrap();
    // A buffer beyond the device's limits is refused before wgpu sees it.
    let too_large = gpu.buffer("huge", usize::MAX / 8);
    assert!(matches!(too_large, Err(daig_provider::gpu::GpuError::TooLarge(..))));
}
