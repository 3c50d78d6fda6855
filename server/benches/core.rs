//! The training core's cost per contribution, on one core: `cargo bench -p daig-server --bench core`.
//!
//! A core is driven as the coordinator drives it, with no I/O: P simulated providers join; each contribution
//! answers the provider's oldest lease (made on that lease's parameter version, so most are fresh and a few
//! a version or two stale), and its effects are carried out in memory (leases queued for their providers, acks
//! counted, evaluations answered at once). Time advances one millisecond per contribution, with a `tick` every
//! 500 ms of it. The peer, in the same run and on the same thread, is the arithmetic alone: the same number
//! of `Aggregator::push` calls (the mean, norm-bounded, as the core's default) and one `Aggregator::finish` +
//! Adam `Optimizer::step` per K, which is the
//! least any K-batch server must do per contribution. The ratio is what the core's bookkeeping (leasing,
//! checks, the plan, effects) costs on top.
//!
//! Flags: `--quick` (fewer and shorter runs).

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use daig_server::training::ToProvider;
use daig_server::training::aggregate;
use daig_server::training::core::{CheckPolicy, Core, CoreConfig, Effect, JoinInfo, LeaseIds, Restore};
use daig_server::training::plan::TrainShard;
use daig_shared::train::{Evaluation, Method, Optimizer, OptimizerConfig, Schedule};
use daig_shared::wire::{Backend, ContributionInfo, Lease, ProjectId, ProviderId, SampleSelection, ShardHash};

const K: u32 = 4;
const BATCH: u32 = 32;

fn adam() -> OptimizerConfig {
    OptimizerConfig {
        method: Method::adam(),
        learning_rate: 1e-3,
        schedule: Schedule::Constant,
        weight_decay: 0.0,
        clip_norm: None,
    }
}

fn samples(lease: &Lease) -> u32 {
    match &lease.samples {
        SampleSelection::Shards(s) => s.iter().map(|s| s.indices.len() as u32).sum(),
        SampleSelection::Indices(i) => i.len() as u32,
    }
}

/// A core with `providers` joined and `params` parameters, over `shards` shards of 65,536 samples (one shard
/// of 60,000 for `shards == 0`: MNIST's training set).
struct Sim {
    core: Core,
    /// Leases in the order they were sent.
    queue: VecDeque<(ProviderId, Lease)>,
    delta: Vec<f32>,
    now_ms: u64,
    acks: u64,
}

impl Sim {
    fn new(providers: u64, params: usize, shards: u32) -> Sim {
        let config = CoreConfig {
            project: ProjectId(1),
            batch_size: BATCH,
            k: K,
            local_steps: 1,
            max_staleness: 8,
            epochs: 1_000_000,
            seed: 1,
            max_providers: 100_000,
            local_learning_rate: 0.01,
            checkpoint_every: 0,
            target_accuracy: None,
            aggregation: aggregate::Aggregation::Mean,
            norm_bound_factor: Some(aggregate::DEFAULT_NORM_BOUND_FACTOR),
            has_validation: false,
            checks: CheckPolicy::off(),
            eval_share: 0.1,
            lease_secs: 5.0,
        };
        let shards = if shards == 0 {
            vec![TrainShard { number: 0, hash: ShardHash([1; 32]), samples: 60_000 }]
        } else {
            (0..shards)
                .map(|i| TrainShard { number: i, hash: ShardHash([(i % 251) as u8; 32]), samples: 65_536 })
                .collect()
        };
        let restore = Restore {
            params: (0..params).map(|i| (i % 17) as f32 * 0.01).collect(),
            optimizer: Optimizer::new(adam(), params).expect("optimizer"),
            version: 0,
            epoch: 0,
            applied: Vec::new(),
            samples_applied: 0,
        };
        let core = Core::new(config, shards, restore, Arc::new(LeaseIds::starting_at(1)));
        let delta = (0..params).map(|i| ((i * 7) % 101) as f32 * 1e-4 - 5e-3).collect();
        let mut sim = Sim { core, queue: VecDeque::new(), delta, now_ms: 0, acks: 0 };
        sim.core.start(0);
        sim.drain();
        for id in 1..=providers {
            let info = JoinInfo {
                id: ProviderId(id),
                backend: Backend::Cpu,
                adapter: "bench".into(),
                samples_per_sec: 10_000.0,
                cached: HashSet::new(),
                site_key: None,
                connected_at_unix: 0,
                verified: 0,
            };
            sim.core.join(0, info).expect("join");
            sim.drain();
        }
        sim
    }

    fn drain(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Send { provider, message: ToProvider::Lease(lease) } => self.queue.push_back((provider, lease)),
                Effect::Send { message: ToProvider::Ack(_), .. } => self.acks += 1,
                Effect::Evaluate(request) => {
                    let result = Ok(Evaluation { loss: 1.0, accuracy: None, samples: 0 });
                    self.core.evaluated(self.now_ms, &request, result);
                }
                _ => {}
            }
        }
    }

    /// Answers `n` leases; returns the seconds it took.
    fn run(&mut self, n: u64) -> f64 {
        let started = Instant::now();
        for _ in 0..n {
            let (provider, lease) = self.queue.pop_front().expect("every provider holds leases");
            let info = ContributionInfo {
                lease_id: lease.lease_id,
                base_version: lease.params_version,
                sample_count: samples(&lease),
                mean_loss: 0.5,
            };
            self.now_ms += 1;
            self.core.contribution(self.now_ms, provider, info, std::hint::black_box(&self.delta));
            if self.now_ms.is_multiple_of(500) {
                self.core.tick(self.now_ms);
            }
            self.drain();
        }
        started.elapsed().as_secs_f64()
    }
}

/// The peer: `n` contributions' arithmetic alone.
fn arithmetic(params: usize, n: u64) -> f64 {
    let delta: Vec<f32> = (0..params).map(|i| ((i * 7) % 101) as f32 * 1e-4 - 5e-3).collect();
    let mut aggregator =
        aggregate::Aggregator::new(aggregate::Aggregation::Mean, params, Some(aggregate::DEFAULT_NORM_BOUND_FACTOR));
    let mut model: Vec<f32> = (0..params).map(|i| (i % 17) as f32 * 0.01).collect();
    let mut optimizer = Optimizer::new(adam(), params).expect("optimizer");
    let started = Instant::now();
    for i in 1..=n {
        let weight = aggregate::weight(BATCH, 0);
        aggregator.push(std::hint::black_box(&delta), weight, 1);
        if i.is_multiple_of(u64::from(K)) {
            optimizer.step(&mut model, aggregator.finish()).expect("step");
        }
    }
    std::hint::black_box(&model);
    started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (runs, budget) = if quick { (3, Duration::from_millis(100)) } else { (7, Duration::from_millis(400)) };
    println!("training core, one thread: K = {K}, batch {BATCH}, 1 local step, Adam; median of {runs} runs");
    println!(
        "| batches per epoch | params | providers | core contributions/s | arithmetic alone /s | core / arithmetic | \
         core us per contribution | acks per contribution |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let rows = [
        (0, 67usize, 10u64),
        (0, 67, 1000),
        (0, 100_000, 10),
        (0, 100_000, 1000),
        (1000, 67, 10),
        (1000, 67, 1000),
        (1000, 100_000, 1000),
    ];
    for (shards, params, providers) in rows {
        let mut sim = Sim::new(providers, params, shards);
        let batches = sim.core.batches_per_epoch();
        // Size a run to the budget from a short warm-up.
        let warm = 200;
        let per = sim.run(warm) / warm as f64;
        let n = ((budget.as_secs_f64() / per.max(1e-9)) as u64).clamp(1000, 2_000_000);
        let acks_before = sim.acks;
        let mut core_rates = Vec::new();
        let mut peer_rates = Vec::new();
        for _ in 0..runs {
            core_rates.push(n as f64 / sim.run(n));
            peer_rates.push(n as f64 / arithmetic(params, n));
        }
        let acks = (sim.acks - acks_before) as f64 / (n * runs) as f64;
        let (core, peer) = (median(core_rates), median(peer_rates));
        println!(
            "| {batches} | {params} | {providers} | {core:.0} | {peer:.0} | **{:.2}** | {:.2} | {acks:.2} |",
            core / peer,
            1e6 / core
        );
    }
}
