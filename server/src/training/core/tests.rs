//! The training core under simulated time: scripted scenarios, and a property test over random interleavings
//! of joins, leaves, contributions, heartbeats, expiries and restarts.

use std::collections::{BTreeMap, HashMap, VecDeque};

use daig_shared::train::{Method, OptimizerConfig, Schedule};
use proptest::prelude::*;

use super::*;

const PARAMS: usize = 3;

fn config(k: u32, max_staleness: u32, local_steps: u32, epochs: u32) -> CoreConfig {
    CoreConfig {
        project: ProjectId(7),
        batch_size: 4,
        k,
        local_steps,
        max_staleness,
        epochs,
        seed: 11,
        max_providers: 1000,
        local_learning_rate: 1.0,
        checkpoint_every: 3,
        target_accuracy: None,
        aggregation: aggregate::Aggregation::Mean,
        norm_bound_factor: Some(aggregate::DEFAULT_NORM_BOUND_FACTOR),
        has_validation: true,
        checks: CheckPolicy::off(),
        eval_share: 0.1,
        lease_secs: 5.0,
    }
}

fn shards(samples: &[u32]) -> Vec<TrainShard> {
    samples
        .iter()
        .enumerate()
        .map(|(i, &n)| TrainShard { number: i as u32, hash: ShardHash([i as u8 + 1; 32]), samples: n })
        .collect()
}

/// Server SGD at learning rate 1: every update adds the weighted mean delta to the parameters.
fn sgd() -> OptimizerConfig {
    OptimizerConfig {
        method: Method::Sgd { momentum: 0.0, nesterov: false },
        learning_rate: 1.0,
        schedule: Schedule::Constant,
        weight_decay: 0.0,
        clip_norm: None,
    }
}

fn fresh() -> Restore {
    Restore {
        params: vec![0.0; PARAMS],
        optimizer: Optimizer::new(sgd(), PARAMS).unwrap(),
        version: 0,
        epoch: 0,
        applied: Vec::new(),
        samples_applied: 0,
    }
}

fn restore_from(params: &[f32], state: &TrainerState) -> Restore {
    Restore {
        params: params.to_vec(),
        optimizer: Optimizer::restore(sgd(), state.optimizer.clone(), PARAMS).unwrap(),
        version: state.version,
        epoch: state.epoch,
        applied: state.applied.clone(),
        samples_applied: state.samples_applied,
    }
}

fn join_info(id: u64, samples_per_sec: f32) -> JoinInfo {
    JoinInfo {
        id: ProviderId(id),
        backend: Backend::Cpu,
        adapter: "test".into(),
        samples_per_sec,
        cached: HashSet::new(),
        site_key: None,
        connected_at_unix: 0,
        verified: 0,
    }
}

fn lease_samples(lease: &Lease) -> u32 {
    match &lease.samples {
        SampleSelection::Shards(s) => s.iter().map(|s| s.indices.len() as u32).sum(),
        SampleSelection::Indices(i) => i.len() as u32,
    }
}

fn info(lease: &Lease, base_version: u64) -> ContributionInfo {
    ContributionInfo { lease_id: lease.lease_id, base_version, sample_count: lease_samples(lease), mean_loss: 0.5 }
}

/// The world around a core: providers' inboxes, the database's ledger, the store's checkpoints.
struct World {
    core: Core,
    /// Messages each provider received, in order.
    inbox: HashMap<ProviderId, Vec<ToProvider>>,
    /// `applied_batches`: (epoch, unit) -> version; its primary key makes a second insert an error.
    ledger: BTreeMap<(u64, Unit), u64>,
    versions: Vec<u64>,
    checkpoints: Vec<(Vec<f32>, TrainerState)>,
    metrics: Vec<MetricsRecord>,
    evaluations: VecDeque<EvalRequest>,
    published: Vec<u64>,
    finished: Option<u64>,
    /// Checks asked for and not yet answered.
    checks: VecDeque<VerifyRequest>,
    shut_out: Vec<(ProviderId, String)>,
    /// The providers whose checks passed, one entry a check.
    passed: Vec<ProviderId>,
    /// Every applied contribution's provider and whether it was checked first.
    applied: Vec<(ProviderId, bool)>,
}

impl World {
    fn new(config: CoreConfig, shards: Vec<TrainShard>) -> World {
        let core = Core::new(config, shards, fresh(), Arc::new(LeaseIds::starting_at(1)));
        let mut world = World {
            core,
            inbox: HashMap::new(),
            ledger: BTreeMap::new(),
            versions: Vec::new(),
            checkpoints: Vec::new(),
            metrics: Vec::new(),
            evaluations: VecDeque::new(),
            published: Vec::new(),
            finished: None,
            checks: VecDeque::new(),
            shut_out: Vec::new(),
            passed: Vec::new(),
            applied: Vec::new(),
        };
        world.core.start(0);
        world.drain();
        world
    }

    /// Carries out the core's effects as the coordinator does, checking the ledger's rules.
    fn drain(&mut self) {
        while let Some(effect) = self.core.poll_effect() {
            match effect {
                Effect::Send { provider, message } => self.inbox.entry(provider).or_default().push(message),
                Effect::Persist(update) => {
                    let last = self.versions.last().copied().unwrap_or(0);
                    assert_eq!(update.version, last + 1, "versions count updates");
                    for c in &update.contributions {
                        self.applied.push((c.provider, c.verified));
                        for &unit in &c.units {
                            let old = self.ledger.insert((update.epoch, unit), update.version);
                            assert!(old.is_none(), "batch {unit:?} of epoch {} applied twice", update.epoch);
                        }
                    }
                    self.versions.push(update.version);
                }
                Effect::Publish(snapshot) => {
                    assert_eq!(Some(&snapshot.version), self.versions.last(), "published after it is persisted");
                    self.published.push(snapshot.version);
                }
                Effect::Evaluate(request) => self.evaluations.push_back(request),
                Effect::RecordMetrics(row) => self.metrics.push(row),
                Effect::Checkpoint { params, state } => self.checkpoints.push((params, state)),
                Effect::Finish { version, .. } => self.finished = Some(version),
                Effect::Verify(request) => self.checks.push_back(request),
                Effect::CheckPassed { provider } => self.passed.push(provider),
                Effect::ShutOut { provider, reason } => self.shut_out.push((provider, reason)),
            }
        }
    }

    /// Answers the evaluations asked for, with `accuracy`.
    fn evaluate_all(&mut self, now_ms: u64, accuracy: f64) {
        while let Some(request) = self.evaluations.pop_front() {
            let result = Ok(Evaluation { loss: 1.0 - accuracy, accuracy: Some(accuracy), samples: 10 });
            self.core.evaluated(now_ms, &request, result);
            self.drain();
        }
    }

    fn join(&mut self, now_ms: u64, id: u64, samples_per_sec: f32) {
        self.core.join(now_ms, join_info(id, samples_per_sec)).unwrap();
        self.drain();
    }

    /// The leases `provider` holds: received, and neither cancelled nor answered.
    fn leases(&self, provider: u64) -> Vec<Lease> {
        let mut open: Vec<Lease> = Vec::new();
        for message in self.inbox.get(&ProviderId(provider)).into_iter().flatten() {
            match message {
                ToProvider::Lease(lease) => open.push(lease.clone()),
                ToProvider::Cancel(c) => open.retain(|l| l.lease_id != c.lease_id),
                ToProvider::Ack(a) => open.retain(|l| l.lease_id != a.lease_id),
                ToProvider::Detach(_) => open.clear(),
            }
        }
        open
    }

    fn contribute(&mut self, now_ms: u64, provider: u64, lease: &Lease, base_version: u64, delta: &[f32]) {
        self.core.contribution(now_ms, ProviderId(provider), info(lease, base_version), delta);
        self.drain();
    }

    /// The last ack or cancellation `provider` got for `lease`.
    fn answer(&self, provider: u64, lease: LeaseId) -> Option<&ToProvider> {
        self.inbox.get(&ProviderId(provider))?.iter().rev().find(|m| match m {
            ToProvider::Ack(a) => a.lease_id == lease,
            ToProvider::Cancel(c) => c.lease_id == lease,
            _ => false,
        })
    }
}

fn refusal(message: Option<&ToProvider>) -> Option<(RefusalReason, String)> {
    match message {
        Some(ToProvider::Ack(Ack { outcome: AckOutcome::Refused { reason, detail }, .. })) => {
            Some((*reason, detail.clone()))
        }
        _ => None,
    }
}

fn units_of(world: &World, lease: LeaseId) -> Vec<Unit> {
    world.core.open_leases().into_iter().find(|l| l.id == lease).map(|l| l.units).unwrap_or_default()
}

/// No batch is held by two leases unless all but one of them are speculative copies.
fn assert_no_double_leases(core: &Core) {
    let mut holders: HashMap<Unit, Vec<&OpenLease>> = HashMap::new();
    let open = core.open_leases();
    for lease in &open {
        for &unit in &lease.units {
            holders.entry(unit).or_default().push(lease);
        }
    }
    for (unit, leases) in holders {
        let ordinary = leases.iter().filter(|l| !l.speculative).count();
        assert!(ordinary <= 1, "batch {unit:?} is in {ordinary} ordinary leases: {leases:?}");
        let providers: HashSet<ProviderId> = leases.iter().map(|l| l.provider).collect();
        assert_eq!(providers.len(), leases.len(), "a provider holds two leases of batch {unit:?}");
    }
}

#[test]
fn leases_expire_at_their_deadline_and_their_batches_return() {
    let mut world = World::new(config(1, 2, 1, 1), shards(&[16]));
    world.join(0, 1, 0.0);
    let first = world.leases(1);
    assert_eq!(first.len(), LEASE_DEPTH, "a provider holds two leases at once");
    assert!(first.iter().all(|l| l.deadline_ms == FIRST_DEADLINE_MS), "an unmeasured provider gets the first deadline");
    let units: Vec<Vec<Unit>> = first.iter().map(|l| units_of(&world, l.lease_id)).collect();

    world.core.tick(FIRST_DEADLINE_MS - 1);
    world.drain();
    assert_eq!(world.leases(1).len(), 2, "nothing expires before the deadline");

    world.core.tick(FIRST_DEADLINE_MS);
    world.drain();
    for lease in &first {
        assert!(
            matches!(world.answer(1, lease.lease_id), Some(ToProvider::Cancel(c)) if c.reason == "its deadline passed"),
            "the expired lease is cancelled"
        );
    }
    // Two leases in a row expired: the provider returns nothing, so it is moved out and holds no slot.
    assert!(
        matches!(world.inbox[&ProviderId(1)].last(), Some(ToProvider::Detach(Detach::Removed(why))) if why.contains("deadlines")),
        "{:?}",
        world.inbox[&ProviderId(1)].last()
    );
    assert_eq!(world.core.provider_count(), 0);
    // The same batches go to the next provider, under new ids.
    world.join(FIRST_DEADLINE_MS, 2, 0.0);
    let again = world.leases(2);
    assert_eq!(again.len(), 2);
    let mut again_units: Vec<Vec<Unit>> = again.iter().map(|l| units_of(&world, l.lease_id)).collect();
    let mut units = units;
    again_units.sort();
    units.sort();
    assert_eq!(again_units, units);
    assert!(again.iter().all(|l| first.iter().all(|f| f.lease_id != l.lease_id)));

    // A contribution for an expired lease changes nothing and says why.
    world.contribute(FIRST_DEADLINE_MS + 1, 1, &first[0], 0, &[1.0; PARAMS]);
    let (reason, detail) = refusal(world.answer(1, first[0].lease_id)).expect("refused");
    assert_eq!(reason, RefusalReason::UnknownLease);
    assert!(detail.contains("its deadline passed"), "{detail}");
    assert_eq!(world.core.version(), 0);
    assert!(world.ledger.is_empty());
}

#[test]
fn leases_are_sized_by_measured_speed_never_by_a_providers_claim() {
    let mut world = World::new(config(1, 2, 4, 1), shards(&[64]));
    // It claims a billion samples a second: its first leases are still one batch with the first deadline.
    world.join(0, 1, 1e9);
    let first = world.leases(1);
    assert!(first.iter().all(|l| l.local_steps == 1 && l.deadline_ms == FIRST_DEADLINE_MS), "{first:?}");
    // One batch of 4 samples in 40 ms is 100 samples/s: the next lease is cut to 5 s of that (clamped to 4
    // batches), with at least the least window.
    world.contribute(40, 1, &first[0], 0, &[0.1; PARAMS]);
    let next = world.leases(1).into_iter().find(|l| first.iter().all(|f| f.lease_id != l.lease_id)).unwrap();
    assert_eq!((next.local_steps, next.deadline_ms), (4, MIN_DEADLINE_MS));
    // A shorter lease budget (`lease_seconds`) cuts it shorter: 80 ms of 100 samples/s is 2 batches.
    let mut world = World::new(CoreConfig { lease_secs: 0.08, ..config(1, 2, 4, 1) }, shards(&[64]));
    world.join(0, 1, 0.0);
    let first = world.leases(1);
    world.contribute(40, 1, &first[0], 0, &[0.1; PARAMS]);
    let next = world.leases(1).into_iter().find(|l| first.iter().all(|f| f.lease_id != l.lease_id)).unwrap();
    assert_eq!(next.local_steps, 2);
}

#[test]
fn heartbeats_extend_deadlines_but_only_so_far() {
    // A measured provider (100 samples/s, from a first contribution at 40 ms) gets leases of up to 4 batches
    // with a 20 s window.
    let mut world = World::new(config(1, 2, 4, 1), shards(&[64]));
    world.join(0, 1, 0.0);
    let first = world.leases(1);
    world.contribute(40, 1, &first[0], 0, &[0.1; PARAMS]);
    let lease = world.leases(1).into_iter().find(|l| first.iter().all(|f| f.lease_id != l.lease_id)).unwrap();
    let t0 = 40;
    assert_eq!(lease.local_steps, 4);
    let window = lease.deadline_ms;
    assert_eq!(window, 20_000);
    let open = |world: &World| world.core.open_leases().into_iter().find(|l| l.id == lease.lease_id);
    let beat = |world: &mut World, now: u64, steps: u32| {
        world.core.heartbeat(now, ProviderId(1), &[LeaseProgress { lease_id: lease.lease_id, steps_done: steps }]);
        world.drain();
    };

    beat(&mut world, 15_000, 1);
    assert_eq!(open(&world).unwrap().deadline_ms, 35_000, "progress moves the deadline a window from now");
    beat(&mut world, 16_000, 1);
    assert_eq!(open(&world).unwrap().deadline_ms, 35_000, "no progress, no extension");
    beat(&mut world, 17_000, 9);
    assert_eq!(open(&world).unwrap().deadline_ms, 35_000, "more steps than the lease has is no progress");
    world.core.heartbeat(18_000, ProviderId(2), &[LeaseProgress { lease_id: lease.lease_id, steps_done: 2 }]);
    assert_eq!(open(&world).unwrap().deadline_ms, 35_000, "another provider cannot extend it");
    beat(&mut world, 30_000, 2);
    beat(&mut world, 45_000, 3);
    let bound = t0 + 3 * window;
    assert_eq!(open(&world).unwrap().deadline_ms, bound, "never past MAX_LEASE_WINDOWS windows after issue");
    beat(&mut world, 59_000, 4);
    assert_eq!(open(&world).unwrap().deadline_ms, bound);

    world.core.tick(bound);
    world.drain();
    assert!(open(&world).is_none(), "the lease expires at the bound however the provider beats");
}

#[test]
fn idle_providers_get_speculative_copies_at_an_epochs_tail_and_the_first_copy_wins() {
    // One shard of two batches: the first provider holds both; the second gets copies.
    let mut world = World::new(config(2, 2, 1, 2), shards(&[8]));
    world.join(0, 1, 0.0);
    world.join(10, 2, 0.0);
    let slow = world.leases(1);
    let fast = world.leases(2);
    assert_eq!((slow.len(), fast.len()), (2, 2));
    let copies = world.core.open_leases();
    assert_eq!(copies.iter().filter(|l| l.speculative).count(), 2, "{copies:?}");
    assert!(copies.iter().filter(|l| l.speculative).all(|l| l.provider == ProviderId(2)));
    assert_no_double_leases(&world.core);
    let unit_of = |world: &World, lease: &Lease| units_of(world, lease.lease_id);
    let copy_of_first = fast.iter().find(|l| unit_of(&world, l) == unit_of(&world, &slow[0])).unwrap().clone();

    world.contribute(20, 2, &copy_of_first, 0, &[1.0; PARAMS]);
    assert!(
        matches!(world.answer(1, slow[0].lease_id), Some(ToProvider::Cancel(c)) if c.reason.contains("contributed these batches first")),
        "the original is cancelled when a copy wins"
    );
    world.contribute(30, 1, &slow[0], 0, &[5.0; PARAMS]);
    let (reason, _) = refusal(world.answer(1, slow[0].lease_id)).expect("the loser is refused");
    assert_eq!(reason, RefusalReason::UnknownLease);
    assert!(world.ledger.is_empty(), "one contribution of k = 2 is buffered, not applied");

    // The other batch arrives from its original holder: the epoch's last, applied with the winner.
    world.contribute(40, 1, &slow[1], 0, &[3.0; PARAMS]);
    assert_eq!(world.versions, vec![1]);
    assert_eq!(world.core.params(), &[2.0; PARAMS], "the mean of the two winners' deltas");
    assert_eq!(world.ledger.len(), 2);
    assert!(world.core.open_leases().is_empty(), "no copy of an applied batch stays open");
}

#[test]
fn staleness_weighs_contributions_and_too_stale_ones_are_acked_stale() {
    // k = 2, max staleness 1, batches of 4 samples: weights are 4 / (1 + staleness).
    let mut world = World::new(config(2, 1, 1, 1), shards(&[64]));
    world.join(0, 1, 0.0);
    world.join(0, 2, 0.0);
    let a = world.leases(1);
    let b = world.leases(2);
    world.contribute(10, 1, &a[0], 0, &[1.0; PARAMS]);
    world.contribute(10, 2, &b[0], 0, &[3.0; PARAMS]);
    assert_eq!(world.core.version(), 1);
    assert_eq!(world.core.params(), &[2.0; PARAMS]);

    // One contribution made on version 0 (staleness 1, weight 2) and one on version 1 (weight 4).
    world.contribute(20, 1, &a[1], 0, &[3.0; PARAMS]);
    world.contribute(20, 2, &b[1], 1, &[6.0; PARAMS]);
    assert_eq!(world.core.version(), 2);
    let expected = 2.0 + (3.0 * 2.0 + 6.0 * 4.0) / 6.0;
    assert!(world.core.params().iter().all(|&p| (p - expected).abs() < 1e-6), "{:?}", world.core.params());

    // Made on version 0 at version 2: too stale; nothing changes and its batches go out again.
    let next = world.leases(1)[0].clone();
    let units = units_of(&world, next.lease_id);
    let before = world.core.params().to_vec();
    world.contribute(30, 1, &next, 0, &[100.0; PARAMS]);
    assert!(matches!(
        world.answer(1, next.lease_id),
        Some(ToProvider::Ack(Ack { outcome: AckOutcome::Stale { current_version: 2 }, .. }))
    ));
    assert_eq!(world.core.params(), before.as_slice());
    assert_eq!(world.core.version(), 2);
    assert!(world.core.open_leases().iter().any(|l| l.units == units), "the stale batches are leased again");
}

#[test]
fn the_projects_aggregation_rule_combines_the_buffer() {
    // k = 3 and the median: a huge contribution among three moves nothing beyond the honest ones.
    let config = CoreConfig { aggregation: aggregate::Aggregation::Median, ..config(3, 1, 1, 1) };
    let mut world = World::new(config, shards(&[64]));
    for id in 1..=3 {
        world.join(0, id, 0.0);
    }
    for (id, value) in [(1, 1.0), (2, 2.0), (3, 1e30)] {
        let lease = world.leases(id)[0].clone();
        world.contribute(10, id, &lease, 0, &[value; PARAMS]);
    }
    assert_eq!(world.core.version(), 1);
    assert_eq!(world.core.params(), &[2.0; PARAMS]);
}

#[test]
fn refused_contributions_change_nothing_and_their_batches_go_out_again() {
    let mut world = World::new(config(1, 2, 1, 1), shards(&[64]));
    world.join(0, 1, 0.0);
    let lease = world.leases(1)[0].clone();
    let units = units_of(&world, lease.lease_id);
    let ok = info(&lease, 0);
    let cases: Vec<(ContributionInfo, Vec<f32>, RefusalReason)> = vec![
        (ok.clone(), vec![1.0; PARAMS + 1], RefusalReason::WrongShape),
        (ok.clone(), vec![1.0, f32::NAN, 1.0], RefusalReason::NonFinite),
        (ok.clone(), vec![1.0, f32::INFINITY, 1.0], RefusalReason::NonFinite),
        (ContributionInfo { mean_loss: f32::NAN, ..ok.clone() }, vec![1.0; PARAMS], RefusalReason::NonFinite),
        (
            ContributionInfo { sample_count: ok.sample_count + 1, ..ok.clone() },
            vec![1.0; PARAMS],
            RefusalReason::Rejected,
        ),
        (ContributionInfo { base_version: 5, ..ok.clone() }, vec![1.0; PARAMS], RefusalReason::Rejected),
    ];
    for (info, delta, expected) in cases {
        // Each refused lease returns its batches; the provider is sent a new lease of them.
        let lease = world
            .leases(1)
            .into_iter()
            .find(|l| units_of(&world, l.lease_id) == units)
            .expect("the batches are leased again");
        let info = ContributionInfo { lease_id: lease.lease_id, ..info };
        world.core.contribution(1, ProviderId(1), info, &delta);
        world.drain();
        let (reason, detail) = refusal(world.answer(1, lease.lease_id)).expect("refused");
        assert_eq!(reason, expected, "{detail}");
        assert_eq!(world.core.version(), 0);
        assert_eq!(world.core.params(), &[0.0; PARAMS]);
        assert!(world.ledger.is_empty());
    }
    // Someone else's lease is not theirs to answer.
    world.join(2, 2, 0.0);
    let theirs = world.leases(1)[0].clone();
    world.contribute(3, 2, &theirs, 0, &[1.0; PARAMS]);
    assert_eq!(refusal(world.answer(2, theirs.lease_id)).unwrap().0, RefusalReason::UnknownLease);
    assert_eq!(world.core.version(), 0);
    assert!(world.core.open_leases().iter().any(|l| l.id == theirs.lease_id), "the owner keeps its lease");
}

#[test]
fn a_provider_leaving_mid_lease_returns_its_batches_to_the_others() {
    let mut world = World::new(config(1, 2, 1, 1), shards(&[16]));
    world.join(0, 1, 0.0);
    let held: Vec<Vec<Unit>> = world.leases(1).iter().map(|l| units_of(&world, l.lease_id)).collect();
    world.join(0, 2, 0.0);
    assert!(world.core.open_leases().iter().filter(|l| l.provider == ProviderId(2)).all(|l| !held.contains(&l.units)));
    let gone = world.leases(1);
    world.core.leave(5, ProviderId(1));
    world.drain();
    // Provider 2 has all four batches between its leases so far and takes the returned ones next.
    let mut seen: Vec<Vec<Unit>> = Vec::new();
    for _ in 0..4 {
        let lease = world.leases(2)[0].clone();
        seen.push(units_of(&world, lease.lease_id));
        world.contribute(10, 2, &lease, world.core.version(), &[1.0; PARAMS]);
    }
    for units in &held {
        assert!(seen.contains(units), "{units:?} went to the other provider");
    }
    world.contribute(20, 1, &gone[0], 0, &[1.0; PARAMS]);
    assert_eq!(refusal(world.answer(1, gone[0].lease_id)).unwrap().0, RefusalReason::UnknownLease);
    assert_eq!(world.ledger.len(), 4);
}

#[test]
fn pause_checkpoints_and_resume_finishes_every_batch_once() {
    let mut world = World::new(config(2, 2, 1, 2), shards(&[20, 12]));
    world.join(0, 1, 0.0);
    world.join(0, 2, 0.0);
    for round in 0..3 {
        for p in [1, 2] {
            let lease = world.leases(p)[0].clone();
            world.contribute(100 * round, p, &lease, world.core.version(), &[0.5; PARAMS]);
        }
    }
    assert_eq!(world.core.version(), 3);
    world.core.stop(Command::Pause);
    world.drain();
    assert!(world.core.is_done());
    let (params, state) = world.checkpoints.last().cloned().expect("pausing checkpoints");
    assert_eq!(state.version, 3);
    assert_eq!(state.applied.len(), 6);
    for p in [1, 2] {
        assert!(matches!(world.inbox[&ProviderId(p)].last(), Some(ToProvider::Detach(Detach::Paused))));
    }
    assert!(world.core.join(0, join_info(3, 0.0)).is_err(), "a paused core takes no one");

    // Resume: a new core from the checkpoint, as the coordinator does.
    world.core = Core::new(
        config(2, 2, 1, 2),
        shards(&[20, 12]),
        restore_from(&params, &state),
        Arc::new(LeaseIds::starting_at(1000)),
    );
    world.core.start(0);
    world.drain();
    drive_to_the_end(&mut world, &[1, 2]);
    assert_eq!(world.ledger.len(), 2 * 8, "two epochs of eight batches, each once");
    assert_eq!(world.finished, Some(world.core.version()));
}

#[test]
fn an_epoch_ends_only_after_its_evaluation_and_a_reached_target_finishes_early() {
    let mut cfg = config(1, 2, 1, 5);
    cfg.target_accuracy = Some(0.9);
    let mut world = World::new(cfg, shards(&[8]));
    world.evaluate_all(0, 0.1);
    world.join(0, 1, 0.0);
    for lease in world.leases(1) {
        world.contribute(600, 1, &lease, world.core.version(), &[1.0; PARAMS]);
    }
    assert_eq!(world.core.epoch(), 0, "the epoch waits for its evaluation");
    assert!(world.leases(1).is_empty(), "nothing to lease meanwhile");
    world.evaluate_all(700, 0.5);
    assert_eq!(world.core.epoch(), 1);
    let row = world.metrics.last().unwrap();
    assert_eq!((row.epoch, row.version, row.val_accuracy), (1, 2, Some(0.5)));
    assert_eq!(world.checkpoints.last().unwrap().1.epoch, 1, "the epoch's end is checkpointed");
    for lease in world.leases(1) {
        world.contribute(800, 1, &lease, world.core.version(), &[1.0; PARAMS]);
    }
    world.evaluate_all(900, 0.95);
    assert_eq!(world.finished, Some(4), "the target is reached after the second epoch of five");
    assert!(matches!(world.inbox[&ProviderId(1)].last(), Some(ToProvider::Detach(Detach::Finished))));
}

/// Every provider in `ids` joins (if not in) and contributes until training finishes.
fn drive_to_the_end(world: &mut World, ids: &[u64]) {
    let mut now = 1_000_000;
    for &id in ids {
        let _ = world.core.join(now, join_info(id, 0.0));
        world.drain();
    }
    for _ in 0..100_000 {
        if world.finished.is_some() {
            return;
        }
        now += 10;
        world.evaluate_all(now, 0.5);
        let mut progressed = false;
        for &id in ids {
            if let Some(lease) = world.leases(id).first().cloned() {
                world.contribute(now, id, &lease, world.core.version(), &[0.01; PARAMS]);
                progressed = true;
            }
        }
        if !progressed {
            world.core.tick(now);
            world.drain();
        }
    }
    panic!("training did not finish");
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    /// Provider `n % 200` joins with a speed class.
    Join(u16, u8),
    Leave(u16),
    /// Provider `n` answers its oldest lease from `stale` versions back (a negative number: ahead).
    Contribute(u16, i8),
    /// Provider `n` answers a lease that is not its own, or answered already.
    Replay(u16),
    Heartbeat(u16),
    /// Time passes, then the tick.
    Advance(u32),
    Evaluate,
    /// The server crashes and restarts from its last checkpoint.
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (any::<u16>(), any::<u8>()).prop_map(|(n, s)| Op::Join(n, s)),
        1 => any::<u16>().prop_map(Op::Leave),
        8 => (any::<u16>(), -1i8..4).prop_map(|(n, s)| Op::Contribute(n, s)),
        1 => any::<u16>().prop_map(Op::Replay),
        1 => any::<u16>().prop_map(Op::Heartbeat),
        2 => (0u32..200_000).prop_map(Op::Advance),
        2 => Just(Op::Evaluate),
        1 => Just(Op::Restart),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_batch_of_every_epoch_is_applied_exactly_once(
        ops in proptest::collection::vec(op(), 1..400),
        providers in 1u16..=200,
        k in 1u32..6,
        max_staleness in 0u32..3,
        local_steps in 1u32..4,
        shard_sizes in proptest::collection::vec(1u32..40, 1..4),
    ) {
        let cfg = config(k, max_staleness, local_steps, 2);
        let mut world = World::new(cfg.clone(), shards(&shard_sizes));
        let mut now = 0u64;
        let mut answered: Vec<(u64, Lease)> = Vec::new();
        let mut restarts = 0u64;
        for op in ops {
            match op {
                Op::Join(n, speed) => {
                    let id = u64::from(n % providers);
                    let speed = [0.0, 1.0, 50.0, 5_000.0][usize::from(speed % 4)];
                    let _ = world.core.join(now, join_info(id, speed));
                }
                Op::Leave(n) => world.core.leave(now, ProviderId(u64::from(n % providers))),
                Op::Contribute(n, stale) => {
                    let id = u64::from(n % providers);
                    if let Some(lease) = world.leases(id).first().cloned() {
                        let base = (world.core.version() as i64 - i64::from(stale)).max(0) as u64;
                        let version = world.core.version();
                        let params = world.core.params().to_vec();
                        world.core.contribution(now, ProviderId(id), info(&lease, base), &[0.25; PARAMS]);
                        if base > version {
                            prop_assert_eq!(world.core.version(), version, "a contribution from the future is refused");
                            prop_assert_eq!(world.core.params(), params.as_slice());
                        }
                        answered.push((id, lease));
                    }
                }
                Op::Replay(n) => {
                    if !answered.is_empty() {
                        let (_, lease) = answered[usize::from(n) % answered.len()].clone();
                        let id = u64::from(n % providers);
                        let (version, ledger) = (world.core.version(), world.ledger.len());
                        world.core.contribution(now, ProviderId(id), info(&lease, version), &[9.0; PARAMS]);
                        world.drain();
                        prop_assert_eq!(world.core.version(), version, "a replayed contribution changes nothing");
                        prop_assert_eq!(world.ledger.len(), ledger);
                    }
                }
                Op::Heartbeat(n) => {
                    let id = u64::from(n % providers);
                    let progress: Vec<LeaseProgress> =
                        world.leases(id).iter().map(|l| LeaseProgress { lease_id: l.lease_id, steps_done: 1 }).collect();
                    world.core.heartbeat(now, ProviderId(id), &progress);
                }
                Op::Advance(ms) => {
                    now += u64::from(ms);
                    world.core.tick(now);
                }
                Op::Evaluate => world.evaluate_all(now, 0.5),
                Op::Restart => {
                    if world.finished.is_some() {
                        continue;
                    }
                    // The database forgets what the last checkpoint lacks; providers reconnect later.
                    let (params, state) = world.checkpoints.last().cloned().unwrap_or_else(|| {
                        (vec![0.0; PARAMS], TrainerState {
                            version: 0, epoch: 0, applied: Vec::new(), samples_applied: 0,
                            optimizer: Optimizer::new(sgd(), PARAMS).unwrap().state().clone(),
                        })
                    });
                    world.ledger.retain(|_, v| *v <= state.version);
                    world.versions.retain(|v| *v <= state.version);
                    world.evaluations.clear();
                    world.inbox.clear();
                    answered.clear();
                    restarts += 1;
                    world.core = Core::new(
                        cfg.clone(),
                        shards(&shard_sizes),
                        restore_from(&params, &state),
                        Arc::new(LeaseIds::starting_at(restarts * 1_000_000)),
                    );
                    world.core.start(now);
                }
            }
            world.drain();
            assert_no_double_leases(&world.core);
            prop_assert_eq!(world.core.version(), world.versions.last().copied().unwrap_or(0));
            if world.finished.is_some() {
                break;
            }
        }
        let ids: Vec<u64> = (0..u64::from(providers.min(8))).collect();
        drive_to_the_end(&mut world, &ids);
        let per_epoch = world.core.batches_per_epoch();
        for epoch in 0..2 {
            let applied = world.ledger.keys().filter(|(e, _)| *e == epoch).count();
            prop_assert_eq!(applied, per_epoch, "epoch {} applied {} of {} batches", epoch, applied, per_epoch);
        }
        prop_assert_eq!(world.ledger.len(), 2 * per_epoch);
        prop_assert_eq!(world.finished, Some(world.core.version()));
        let mut expected: Vec<u64> = world.versions.clone();
        expected.dedup();
        prop_assert_eq!(expected.len(), world.versions.len(), "no version persisted twice");
    }
}

#[test]
fn periodic_evaluations_wait_for_a_new_version() {
    let mut world = World::new(config(1, 2, 1, 1), shards(&[64]));
    // The starting parameters are evaluated once.
    world.evaluate_all(0, 0.5);
    world.join(0, 1, 0.0);
    for second in 1..=5 {
        world.core.tick(second * 1000);
        world.drain();
        assert!(world.evaluations.is_empty(), "version 0 is evaluated again at {second} s");
    }
    let lease = world.leases(1)[0].clone();
    world.contribute(6_000, 1, &lease, 0, &[1.0; PARAMS]);
    world.core.tick(7_000);
    world.drain();
    let versions: Vec<u64> = world.evaluations.iter().map(|e| e.version).collect();
    assert_eq!(versions, vec![1], "a new version is evaluated once");
}

#[test]
fn evaluations_between_epoch_ends_take_at_most_their_share_of_the_time() {
    // Evaluations that take 0.2, 1 and 4 s (queueing included) with a share of 10% and of 50%: the next one
    // waits nine times (or once) as long, and never less than the floor.
    for (share, took) in [(0.1, 200u64), (0.1, 1_000), (0.1, 4_000), (0.5, 1_000), (0.5, 10)] {
        let mut world = World::new(CoreConfig { eval_share: share, ..config(1, 2, 1, 1) }, shards(&[4000]));
        world.evaluate_all(0, 0.5);
        world.join(0, 1, 0.0);
        // A new version, then its evaluation is asked for at `asked` and answered `took` later.
        let mut now = 1_000;
        let mut lease = world.leases(1)[0].clone();
        world.contribute(now, 1, &lease, 0, &[1.0; PARAMS]);
        world.core.tick(now);
        world.drain();
        assert_eq!(world.evaluations.len(), 1, "share {share}: the new version is evaluated");
        now += took;
        world.evaluate_all(now, 0.5);
        let answered = now;
        let wait = ((took as f64 * (1.0 / share - 1.0)) as u64).max(EVAL_INTERVAL_MS);
        // New versions keep coming; no evaluation is asked for before the wait is over, one is right after.
        let mut version = 1;
        loop {
            now += 100;
            lease = world.leases(1)[0].clone();
            world.contribute(now, 1, &lease, version, &[1.0; PARAMS]);
            version += 1;
            world.core.tick(now);
            world.drain();
            if now < answered + wait {
                assert!(
                    world.evaluations.is_empty(),
                    "share {share}, took {took}: evaluated {} ms after",
                    now - answered
                );
            } else {
                assert_eq!(world.evaluations.len(), 1, "share {share}, took {took}: no evaluation after the wait");
                break;
            }
        }
    }
}

#[test]
fn an_abort_after_a_failed_persist_carries_out_nothing_but_the_goodbyes() {
    let mut world = World::new(config(1, 2, 1, 1), shards(&[64]));
    world.evaluate_all(0, 0.5);
    world.join(0, 1, 0.0);
    world.join(0, 2, 0.0);
    let lease = world.leases(1)[0].clone();
    world.core.contribution(10, ProviderId(1), info(&lease, 0), &[1.0; PARAMS]);
    // The shell carries effects out in order until one fails: here the update's `Persist`.
    while !matches!(world.core.poll_effect().expect("the update is persisted"), Effect::Persist(_)) {}
    world.core.abort("the database failed".into());
    let mut detached = HashSet::new();
    while let Some(effect) = world.core.poll_effect() {
        match effect {
            Effect::Send { provider, message: ToProvider::Detach(_) } => assert!(detached.insert(provider)),
            // Its open leases are cancelled before it is let go.
            Effect::Send { message: ToProvider::Cancel(_), .. } => {}
            // No ack, lease, parameters, evaluation or checkpoint of the update that was not persisted.
            other => panic!("{other:?} carried out after the update failed to persist"),
        }
    }
    assert_eq!(detached, HashSet::from([ProviderId(1), ProviderId(2)]), "every provider is let go");
}

/// What an honest provider sends for `lease`, and what the recomputation gives (the tests' stand-in for the
/// reference trainer).
fn honest_delta(lease: LeaseId) -> Vec<f32> {
    vec![0.01 * (lease.0 % 7 + 1) as f32; PARAMS]
}

fn checked_config() -> CoreConfig {
    CoreConfig { checks: CheckPolicy::on(99), ..config(1, 4, 1, 1) }
}

impl World {
    /// Answers every check asked for with the honest recomputation.
    fn answer_checks(&mut self, now_ms: u64) -> Vec<VerifyRequest> {
        let mut answered = Vec::new();
        while let Some(request) = self.checks.pop_front() {
            let reference = LocalResult { delta: honest_delta(request.lease), mean_loss: 0.5, samples: 4 };
            self.core.verified(now_ms, request.lease, Ok(reference));
            self.drain();
            answered.push(request);
        }
        answered
    }
}

#[test]
fn an_untrusted_providers_contribution_counts_only_once_its_recomputation_matches() {
    let mut world = World::new(checked_config(), shards(&[16]));
    world.join(0, 1, 0.0);
    let lease = world.leases(1)[0].clone();
    world.contribute(10, 1, &lease, 0, &honest_delta(lease.lease_id));
    assert!(world.versions.is_empty(), "held, not applied, until checked");
    assert_eq!(world.leases(1).len(), 2, "no lease beyond the held contribution and the other lease");
    assert_eq!(world.core.open_leases().len(), 1, "a held contribution counts against its provider's leases in flight");
    let request = world.checks.front().cloned().expect("a check is asked for");
    // The check recomputes exactly what the lease fixed: its samples, steps, rate and seed, from the base version.
    assert_eq!(request.lease, lease.lease_id);
    assert_eq!(SampleSelection::Shards(request.selection.clone()), lease.samples);
    assert_eq!(request.work.local_steps as u32, lease.local_steps);
    assert_eq!(request.work.learning_rate, lease.learning_rate);
    assert_eq!(request.work.seed, lease.lease_id.0);
    assert_eq!(&request.params[..], &[0.0; PARAMS]);
    let live = world.core.status().providers[0].clone();
    assert_eq!((live.verified, live.unchecked, live.held, live.standing), (0, 0, 1, Standing::New));
    world.answer_checks(20);
    assert_eq!(world.versions, vec![1], "applied once its check passed");
    assert_eq!(world.passed, vec![ProviderId(1)], "its identity's standing grows by the check");
    let live = world.core.status().providers[0].clone();
    assert_eq!((live.verified, live.unchecked, live.held, live.standing), (1, 0, 0, Standing::New));
    assert!(matches!(
        world.answer(1, lease.lease_id),
        Some(ToProvider::Ack(Ack { outcome: AckOutcome::Applied { .. }, .. }))
    ));
    assert!(world.shut_out.is_empty());
}

#[test]
fn a_contribution_that_differs_from_its_recomputation_shuts_its_provider_out_and_nothing_of_it_counts() {
    // Whatever the deviation: each of these alone fails, and an honest provider beside it is never shut out.
    type Deviation = fn(&[f32]) -> Vec<f32>;
    let deviations: [(&str, Deviation); 5] = [
        ("zero", |d| vec![0.0; d.len()]),
        ("scaled by -10", |d| d.iter().map(|v| -10.0 * v).collect()),
        ("huge", |d| vec![1e25; d.len()]),
        ("slightly off", |d| d.iter().map(|v| v * 1.01).collect()),
        ("one value changed", |d| {
            let mut d = d.to_vec();
            d[0] += 1e-3;
            d
        }),
    ];
    for (name, deviate) in deviations {
        let mut world = World::new(checked_config(), shards(&[32]));
        world.join(0, 1, 0.0);
        world.join(0, 2, 0.0);
        let hostile = world.leases(2);
        let held_units: Vec<Vec<Unit>> = hostile.iter().map(|l| units_of(&world, l.lease_id)).collect();
        world.contribute(10, 2, &hostile[0], 0, &deviate(&honest_delta(hostile[0].lease_id)));
        world.answer_checks(20);
        let (reason, detail) = refusal(world.answer(2, hostile[0].lease_id)).expect("refused");
        assert_eq!(reason, RefusalReason::Rejected, "{name}");
        assert!(detail.contains("not the computation its lease asked for"), "{name}: {detail}");
        assert!(
            matches!(world.inbox[&ProviderId(2)].last(), Some(ToProvider::Detach(Detach::ShutOut(_)))),
            "{name}: the provider is told"
        );
        assert_eq!(world.shut_out.iter().map(|(p, _)| p.0).collect::<Vec<_>>(), vec![2], "{name}");
        assert!(world.versions.is_empty(), "{name}: nothing of it was applied");
        assert_eq!(world.core.provider_count(), 1, "{name}");
        // Its batches (the checked one and the one it still held) go to the honest provider, which finishes
        // the epoch with every batch applied once.
        let honest_units: Vec<Unit> = world.leases(1).iter().flat_map(|l| units_of(&world, l.lease_id)).collect();
        let mut now = 30;
        while world.finished.is_none() && now < 10_000 {
            for lease in world.leases(1) {
                world.contribute(now, 1, &lease, world.core.version(), &honest_delta(lease.lease_id));
                now += 1;
            }
            world.answer_checks(now);
            world.evaluate_all(now, 0.9);
            now += 1;
        }
        assert!(world.finished.is_some(), "{name}: training finished");
        assert!(world.shut_out.len() == 1, "{name}: the honest provider was never shut out");
        for units in held_units.iter().chain([&honest_units]) {
            for unit in units {
                assert!(world.ledger.contains_key(&(0, *unit)), "{name}: {unit:?} applied");
            }
        }
    }
}

#[test]
fn a_check_that_fails_on_the_servers_side_blames_no_one() {
    let mut world = World::new(checked_config(), shards(&[16]));
    world.join(0, 1, 0.0);
    let lease = world.leases(1)[0].clone();
    let units = units_of(&world, lease.lease_id);
    world.contribute(10, 1, &lease, 0, &honest_delta(lease.lease_id));
    let request = world.checks.pop_front().unwrap();
    world.core.verified(20, request.lease, Err("cannot read shard".into()));
    world.drain();
    let (reason, detail) = refusal(world.answer(1, lease.lease_id)).expect("refused");
    assert_eq!(reason, RefusalReason::Other);
    assert!(detail.contains("could not check it"), "{detail}");
    assert!(world.shut_out.is_empty() && world.core.provider_count() == 1);
    // Its batches are leased again.
    let again: Vec<Unit> = world.leases(1).iter().flat_map(|l| units_of(&world, l.lease_id)).collect();
    assert!(units.iter().all(|u| again.contains(u)), "{units:?} in {again:?}");
}

#[test]
fn trusted_providers_are_checked_at_a_falling_rate_that_never_reaches_zero() {
    let policy = CheckPolicy::on(7);
    for verified in 0..u64::from(CheckPolicy::TRUST_AFTER) {
        assert_eq!(policy.rate(verified), 1.0);
        assert!(!policy.trusts(verified));
    }
    let mut last = 1.0;
    for verified in u64::from(CheckPolicy::TRUST_AFTER)..100_000 {
        let rate = policy.rate(verified);
        assert!(rate <= last && rate >= CheckPolicy::MIN_RATE, "{verified}: {rate}");
        last = rate;
    }
    assert_eq!(last, CheckPolicy::MIN_RATE);
    // The draw follows the rate, and depends on the secret.
    let picked = (0..20_000).filter(|&l| policy.picks(1_000_000, LeaseId(l))).count();
    assert!((800..1200).contains(&picked), "{picked} of 20000 at 5%");
    let other = CheckPolicy::on(8);
    assert!((0..200).any(|l| policy.picks(1_000_000, LeaseId(l)) != other.picks(1_000_000, LeaseId(l))));
    assert!(!CheckPolicy::off().picks(0, LeaseId(1)));
}

#[test]
fn untrusted_providers_get_no_speculative_copies() {
    // One batch, held by provider 1: an idle untrusted provider 2 gets no copy of it.
    let mut world = World::new(checked_config(), shards(&[4]));
    world.join(0, 1, 0.0);
    world.join(0, 2, 0.0);
    assert_eq!(world.leases(1).len(), 1);
    assert!(world.leases(2).is_empty());
    world.core.tick(100);
    world.drain();
    assert!(world.leases(2).is_empty());
}

#[test]
fn a_provider_in_good_standing_is_checked_by_sample_and_its_unchecked_contributions_are_counted() {
    let mut world = World::new(checked_config(), shards(&[256]));
    world.core.join(0, JoinInfo { verified: 1_000_000, ..join_info(1, 0.0) }).expect("joins");
    world.drain();
    let mut now = 10;
    for _ in 0..20 {
        for lease in world.leases(1) {
            world.contribute(now, 1, &lease, world.core.version(), &honest_delta(lease.lease_id));
            now += 1;
        }
        world.answer_checks(now);
        now += 1;
    }
    let live = world.core.status().providers[0].clone();
    assert_eq!(live.standing, Standing::Trusted);
    let unchecked = world.applied.iter().filter(|(_, checked)| !checked).count() as u64;
    let checked = world.applied.iter().filter(|(_, checked)| *checked).count() as u64;
    assert_eq!(live.unchecked, unchecked, "{live:?}");
    assert_eq!(live.verified, checked, "{live:?}");
    assert_eq!(world.passed.len() as u64, checked);
    // At the minimum rate (5%) most of 64 contributions go unchecked, and not all of them.
    assert!(unchecked > checked && unchecked + checked >= 40, "{unchecked} unchecked, {checked} checked");
}

#[test]
fn a_trusted_provider_keeps_training_while_its_sampled_work_is_checked_and_a_new_one_does_not() {
    // Every contribution picked (min_rate 1): held until its check, for both providers.
    let config = CoreConfig { checks: CheckPolicy { min_rate: 1.0, ..CheckPolicy::on(99) }, ..config(1, 4, 1, 1) };
    let mut world = World::new(config, shards(&[256]));
    world.join(0, 1, 0.0);
    world.core.join(0, JoinInfo { verified: 1_000_000, ..join_info(2, 0.0) }).expect("joins");
    world.drain();
    let issued = |world: &World, provider: u64| {
        world.inbox[&ProviderId(provider)].iter().filter(|m| matches!(m, ToProvider::Lease(_))).count()
    };
    for provider in [1, 2] {
        for lease in world.leases(provider) {
            world.contribute(10, provider, &lease, 0, &honest_delta(lease.lease_id));
        }
    }
    assert_eq!(world.checks.len(), 4, "every contribution waits for its check");
    // The new provider waits with two pieces of unverified work; the trusted one is leased more at once.
    assert_eq!(issued(&world, 1), LEASE_DEPTH, "a new provider holds at most LEASE_DEPTH unverified pieces of work");
    assert_eq!(issued(&world, 2), 2 * LEASE_DEPTH, "a trusted provider keeps training");
    let fresh: Vec<Lease> = world.leases(2).into_iter().skip(LEASE_DEPTH).collect();
    for lease in &fresh {
        world.contribute(20, 2, lease, 0, &honest_delta(lease.lease_id));
    }
    // Beyond LEASE_DEPTH held pieces, each one held takes the place of a lease: then it waits for its checks.
    assert_eq!(issued(&world, 2), 2 * LEASE_DEPTH, "{:?}", world.core.status().providers);
    world.answer_checks(30);
    assert!(issued(&world, 1) > LEASE_DEPTH, "checked, the new provider trains again");
}
