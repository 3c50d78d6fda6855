//! GPU engine benchmarks on the adapter present, beside the CPU reference trainer in the same run:
//! matmul GFLOP/s (kernel time apart from upload and readback) and training samples/s of the MNIST MLP and
//! a convnet at batch 64 and 256. Prints a Markdown table.
//!
//! `cargo run --release -p daig-provider --example gpu_bench [-- --quick] [--no-cpu] [--sweep]`
//!
//! `--sweep` also times the 4096^3 matmul with several tile shapes, to choose the default for large GPUs.
//!
//! Timings are wall-clock over repeated runs after a warm-up; kernel time is the time of back-to-back
//! launches up to the GPU's completion, with nothing copied in or out.

use std::time::{Duration, Instant};

use daig_provider::gpu::Gpu;
use daig_provider::gpu::matmul::{Matmul, MatmulTiles};
use daig_provider::gpu::trainer::{DropoutSeed, GpuTrainer};
use daig_shared::model::{Limits, Model};
use daig_shared::params::init_params;
use daig_shared::train::{Batch, DropoutKey, Labels, LocalConfig, Trainer, mat_mul};
use ndarray::{Array2, ArrayView2};

const MLP: &str = r#"{"input_shape": [784], "layers": [
    {"type": "dense", "units": 128, "activation": "relu"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;
const CONVNET: &str = r#"{"input_shape": [28, 28, 1], "layers": [
    {"type": "conv2d", "filters": 8, "kernel_size": 3, "activation": "relu"}, {"type": "max_pool2d", "pool_size": 2},
    {"type": "conv2d", "filters": 16, "kernel_size": 3, "activation": "relu"}, {"type": "max_pool2d", "pool_size": 2},
    {"type": "flatten"}, {"type": "dense", "units": 10}], "loss": "cross_entropy"}"#;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect()
}

/// Runs `f` until `budget` has passed (at least `min_runs` times) and returns the median time of one run.
fn time(budget: Duration, min_runs: usize, mut f: impl FnMut()) -> Duration {
    f();
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < min_runs || start.elapsed() < budget {
        let t = Instant::now();
        f();
        times.push(t.elapsed());
        if times.len() >= 1000 {
            break;
        }
    }
    times.sort();
    times[times.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let cpu = !args.iter().any(|a| a == "--no-cpu");
    let budget = Duration::from_millis(if quick { 300 } else { 2000 });
    let gpu = pollster::block_on(Gpu::new()).expect("a GPU adapter");
    println!("adapter: {} ({}, driver {})", gpu.adapter.name, gpu.adapter.backend, gpu.adapter.driver);
    let tiles = MatmulTiles::for_gpu(&gpu);
    println!("matmul tiles: {tiles:?}\n");

    if args.iter().any(|a| a == "--sweep") {
        sweep(&gpu, budget);
    }

    println!("| benchmark | engine (GPU) | reference (CPU) | GPU / CPU |");
    println!("|---|---|---|---|");
    let sizes: &[usize] = if quick { &[256, 1024] } else { &[256, 1024, 4096] };
    for &n in sizes {
        let a = random(n * n, 1);
        let b = random(n * n, 2);
        let flops = 2.0 * (n as f64).powi(3);
        let mm = Matmul::new(n, n, n);
        let (ga, gb, gc) =
            (gpu.buffer("a", n * n).unwrap(), gpu.buffer("b", n * n).unwrap(), gpu.buffer("c", n * n).unwrap());
        let upload = time(budget, 3, || {
            gpu.write(&ga, &a);
            gpu.write(&gb, &b);
            gpu.wait().unwrap();
        });
        let launches = mm.prepare(&gpu, tiles, &ga, &gb, None, &gc).unwrap();
        let dispatch = &launches[0];
        // Several launches per submission so that submission overhead does not dominate small sizes.
        let reps = (1usize << 33).div_ceil(n * n * n).clamp(1, 64);
        let kernel = time(budget, 3, || {
            gpu.run(&vec![dispatch; reps]);
            gpu.wait().unwrap();
        }) / reps as u32;
        let readback = time(budget, 3, || {
            pollster::block_on(gpu.read(&gc, n * n)).unwrap();
        });
        let gpu_gflops = flops / kernel.as_secs_f64() / 1e9;
        let cpu_gflops = if cpu && n <= 1024 {
            let (x, y) = (
                Array2::from_shape_vec((n, n), a.clone()).unwrap(),
                Array2::from_shape_vec((n, n), b.clone()).unwrap(),
            );
            let mut z = Array2::zeros((n, n));
            let t = time(budget, 2, || {
                mat_mul(&x.view(), &y.view(), &mut z.view_mut());
                std::hint::black_box(&z);
            });
            Some(flops / t.as_secs_f64() / 1e9)
        } else {
            None
        };
        println!(
            "| matmul {n}^3 GFLOP/s (kernel; upload {:.2} ms, readback {:.2} ms) | {gpu_gflops:.1} | {} | {} |",
            upload.as_secs_f64() * 1e3,
            readback.as_secs_f64() * 1e3,
            cpu_gflops.map_or("-".into(), |c| format!("{c:.1}")),
            cpu_gflops.map_or("-".into(), |c| format!("{:.1}x", gpu_gflops / c)),
        );
    }

    for (name, json) in [("MNIST MLP 784-128-10", MLP), ("convnet 8c3-p2-16c3-p2-10", CONVNET)] {
        let model = Model::from_json(json, &Limits::default()).unwrap();
        for batch in [64usize, 256] {
            let samples = batch * 8;
            let in_elems = model.input_shape().elements().unwrap();
            let x = random(samples * in_elems, 3);
            let classes: Vec<u32> = (0..samples as u32).map(|i| i % 10).collect();
            let y: Vec<f32> = classes.iter().map(|&c| c as f32).collect();
            let params = init_params(&model, 1);
            let indices: Vec<u32> = (0..samples as u32).collect();
            let steps = 8;

            let gpu_ctx = pollster::block_on(Gpu::new()).unwrap();
            let mut trainer = GpuTrainer::new(gpu_ctx, model.clone(), batch).unwrap();
            trainer.load_params(&params).unwrap();
            trainer.load_shard(&x, &y).unwrap();
            let mut first = 0;
            let t = time(budget, 3, || {
                pollster::block_on(trainer.train(
                    &indices,
                    batch,
                    steps,
                    0.01,
                    DropoutSeed { seed: 1, first_step: first },
                ))
                .unwrap();
                first += steps as u64;
            });
            let gpu_rate = (batch * steps) as f64 / t.as_secs_f64();

            let cpu_rate = cpu.then(|| {
                let mut reference = Trainer::new(&model);
                reference.load_params(&params).unwrap();
                let xs = ArrayView2::from_shape((samples, in_elems), &x).unwrap();
                let data = Batch { x: xs, y: Labels::Classes(&classes) };
                let config = LocalConfig {
                    batch_size: batch,
                    local_steps: 2,
                    learning_rate: 0.01,
                    dropout: DropoutKey { seed: 1, step: 0 },
                };
                let t = time(budget, 2, || {
                    reference.train_local(&data, &indices, &config).unwrap();
                });
                (batch * 2) as f64 / t.as_secs_f64()
            });
            println!(
                "| {name} train samples/s, batch {batch} ({steps} local steps per call, delta read back) | {gpu_rate:.0} | {} | {} |",
                cpu_rate.map_or("-".into(), |c| format!("{c:.0}")),
                cpu_rate.map_or("-".into(), |c| format!("{:.2}x", gpu_rate / c)),
            );
        }
    }
}

/// Times the 4096^3 matmul with several tile shapes.
fn sweep(gpu: &Gpu, budget: Duration) {
    let n = 4096;
    let (a, b) = (random(n * n, 1), random(n * n, 2));
    let (ga, gb, gc) =
        (gpu.buffer_from("a", &a).unwrap(), gpu.buffer_from("b", &b).unwrap(), gpu.buffer("c", n * n).unwrap());
    let mm = Matmul::new(n, n, n);
    println!("| kernel: tiles (wg_x, wg_y, tm, tn, bk) | matmul 4096^3 GFLOP/s (kernel) |");
    println!("|---|---|");
    for (wg_x, wg_y, tm, tn, bk, large) in [
        (16, 16, 8, 8, 8, true),
        (16, 16, 8, 8, 8, false),
        (16, 16, 8, 8, 16, false),
        (32, 8, 4, 8, 8, false),
        (32, 8, 4, 8, 16, false),
        (16, 16, 4, 8, 8, false),
        (8, 8, 4, 4, 8, false),
    ] {
        let tiles = MatmulTiles { wg_x, wg_y, tm, tn, bk, large };
        let d = mm.prepare(gpu, tiles, &ga, &gb, None, &gc).unwrap().remove(0);
        let t = time(budget, 3, || {
            gpu.run(&[&d, &d, &d, &d]);
            gpu.wait().unwrap();
        }) / 4;
        let kernel = if large { "matmul_large" } else { "matmul" };
        println!(
            "| {kernel}: {wg_x}, {wg_y}, {tm}, {tn}, {bk} | {:.0} |",
            2.0 * (n as f64).powi(3) / t.as_secs_f64() / 1e9
        );
    }
    println!();
}
