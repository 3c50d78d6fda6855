//! The epoch plan: which batches an epoch has, which are pending, leased, buffered or applied, and which
//! samples each holds.
//!
//! An epoch is cut per train shard: shard `s` (`n_s` samples) is shuffled with a seed derived from the
//! project's seed, the epoch and `s`, and cut into `ceil(n_s / batch_size)` batches in that order (the last one
//! may be short). A batch is named by a [`Unit`] `(shard, batch)`; its samples are a pure function of the seed,
//! so a checkpoint needs only the set of applied units, and a restart re-creates the same batches.
//!
//! A unit moves `Pending -> Leased -> Buffered -> Applied`; an expired, returned or refused lease moves its
//! units back to `Pending` (unless another copy of the lease got them further). When nothing is pending, idle
//! providers get *speculative* copies of the units leased longest ago, so that a vanished provider never stalls
//! the end of an epoch; the first copy to arrive wins and the others are refused. Batches are never applied twice:
//! only a `Leased` unit can be buffered.

use std::collections::HashSet;

use daig_shared::data::permutation;
use daig_shared::wire::ShardHash;
use serde::{Deserialize, Serialize};

/// A train shard as the plan knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainShard {
    /// The shard's number among the train shards.
    pub number: u32,
    pub hash: ShardHash,
    pub samples: u32,
}

/// One batch of an epoch: its shard's position in the plan and its number within that shard's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Unit {
    pub shard: u32,
    pub batch: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnitState {
    Pending,
    /// Held by this many leases (more than one only for speculative copies).
    Leased {
        leases: u16,
        since_ms: u64,
    },
    /// In the aggregation buffer of the current version, not yet applied.
    Buffered,
    Applied,
}

/// Mixes the project seed, the epoch and the shard into one seed (splitmix64 finaliser).
fn shuffle_seed(seed: u64, epoch: u64, shard: u32) -> u64 {
    let mut z = seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(shard).wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// One epoch's batches and their states.
#[derive(Debug, Clone)]
pub struct EpochPlan {
    epoch: u64,
    batch_size: u32,
    shards: Vec<TrainShard>,
    /// Per shard, the sample order of this epoch.
    orders: Vec<Vec<u32>>,
    /// Per shard, per batch.
    states: Vec<Vec<UnitState>>,
    pending: usize,
    done: usize,
    total: usize,
}

/// What the plan hands out for one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    pub units: Vec<Unit>,
    /// A copy of units another lease holds.
    pub speculative: bool,
}

impl EpochPlan {
    /// The plan of `epoch`, with every unit in `applied` already applied (from a checkpoint).
    ///
    /// # Panics
    /// Never for shards of at most `u32::MAX` samples (the shard format's bound).
    pub fn new(epoch: u64, seed: u64, batch_size: u32, shards: Vec<TrainShard>, applied: &[Unit]) -> EpochPlan {
        let batch_size = batch_size.max(1);
        let orders: Vec<Vec<u32>> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| {
                permutation(s.samples as usize, shuffle_seed(seed, epoch, i as u32)).expect("a shard holds < 2^32")
            })
            .collect();
        let mut states: Vec<Vec<UnitState>> =
            shards.iter().map(|s| vec![UnitState::Pending; s.samples.div_ceil(batch_size) as usize]).collect();
        let total = states.iter().map(Vec::len).sum();
        let mut done = 0;
        for unit in applied {
            if let Some(state) = states.get_mut(unit.shard as usize).and_then(|s| s.get_mut(unit.batch as usize))
                && *state != UnitState::Applied
            {
                *state = UnitState::Applied;
                done += 1;
            }
        }
        EpochPlan { epoch, batch_size, shards, orders, states, pending: total - done, done, total }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn shards(&self) -> &[TrainShard] {
        &self.shards
    }

    /// Batches in the epoch.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Batches applied.
    pub fn applied(&self) -> usize {
        self.done
    }

    /// Whether every batch is applied.
    pub fn is_complete(&self) -> bool {
        self.done == self.total
    }

    /// Whether every batch is buffered or applied: nothing more can be leased or arrive for this epoch.
    pub fn all_contributed(&self) -> bool {
        self.states.iter().flatten().all(|s| matches!(s, UnitState::Buffered | UnitState::Applied))
    }

    /// The units applied so far, for a checkpoint.
    pub fn applied_units(&self) -> Vec<Unit> {
        self.units_where(|s| s == UnitState::Applied)
    }

    fn units_where(&self, keep: impl Fn(UnitState) -> bool) -> Vec<Unit> {
        let mut out = Vec::new();
        for (shard, states) in self.states.iter().enumerate() {
            for (batch, &state) in states.iter().enumerate() {
                if keep(state) {
                    out.push(Unit { shard: shard as u32, batch: batch as u32 });
                }
            }
        }
        out
    }

    /// The sample indices of `unit` within its shard.
    pub fn samples(&self, unit: Unit) -> &[u32] {
        let order = &self.orders[unit.shard as usize];
        let start = (unit.batch * self.batch_size) as usize;
        let end = (start + self.batch_size as usize).min(order.len());
        &order[start..end]
    }

    fn is_full(&self, unit: Unit) -> bool {
        self.samples(unit).len() == self.batch_size as usize
    }

    fn state_mut(&mut self, unit: Unit) -> Option<&mut UnitState> {
        self.states.get_mut(unit.shard as usize)?.get_mut(unit.batch as usize)
    }

    /// Up to `max_units` pending batches of one shard, preferring shards in `cached`, for a lease at `now_ms`.
    /// A short batch (the last of a shard) goes alone, since minibatches are cut from the concatenated samples.
    /// When nothing is pending and `speculate`, one speculative copy of the unit leased longest ago that `held`
    /// does not hold.
    pub fn pick(
        &mut self,
        max_units: u32,
        cached: &HashSet<ShardHash>,
        held: &HashSet<Unit>,
        now_ms: u64,
        speculate: bool,
    ) -> Option<Pick> {
        if self.pending > 0 {
            let pending_in = |states: &Vec<UnitState>| states.iter().filter(|s| **s == UnitState::Pending).count();
            let shard = (0..self.shards.len()).filter(|&i| pending_in(&self.states[i]) > 0).max_by_key(|&i| {
                (cached.contains(&self.shards[i].hash), pending_in(&self.states[i]), usize::MAX - i)
            })?;
            let mut units = Vec::new();
            for batch in 0..self.states[shard].len() {
                if units.len() >= max_units.max(1) as usize {
                    break;
                }
                let unit = Unit { shard: shard as u32, batch: batch as u32 };
                if self.states[shard][batch] != UnitState::Pending {
                    continue;
                }
                let full = self.is_full(unit);
                if !full && !units.is_empty() {
                    continue;
                }
                units.push(unit);
                if !full {
                    break;
                }
            }
            for &unit in &units {
                *self.state_mut(unit).expect("picked from the plan") =
                    UnitState::Leased { leases: 1, since_ms: now_ms };
            }
            self.pending -= units.len();
            return Some(Pick { units, speculative: false });
        }
        if !speculate {
            return None;
        }
        let oldest = self
            .units_where(|s| matches!(s, UnitState::Leased { .. }))
            .into_iter()
            .filter(|u| !held.contains(u))
            .min_by_key(|&u| match self.states[u.shard as usize][u.batch as usize] {
                UnitState::Leased { leases, since_ms } => (leases, since_ms),
                _ => (u16::MAX, u64::MAX),
            })?;
        if let Some(UnitState::Leased { leases, .. }) = self.state_mut(oldest) {
            *leases = leases.saturating_add(1);
        }
        Some(Pick { units: vec![oldest], speculative: true })
    }

    /// A lease holding `units` ended without a contribution (expired, returned, refused, cancelled): units no
    /// other lease holds become pending again.
    pub fn release(&mut self, units: &[Unit]) {
        for &unit in units {
            let Some(state) = self.state_mut(unit) else { continue };
            if let UnitState::Leased { leases, since_ms } = *state {
                if leases > 1 {
                    *state = UnitState::Leased { leases: leases - 1, since_ms };
                } else {
                    *state = UnitState::Pending;
                    self.pending += 1;
                }
            }
        }
    }

    /// Whether a contribution for `units` can be buffered: each is leased (not pending, buffered or applied).
    pub fn can_buffer(&self, units: &[Unit]) -> bool {
        units.iter().all(|u| {
            matches!(
                self.states.get(u.shard as usize).and_then(|s| s.get(u.batch as usize)),
                Some(UnitState::Leased { .. })
            )
        })
    }

    /// Marks `units` (checked with [`EpochPlan::can_buffer`]) as in the aggregation buffer.
    pub fn buffer(&mut self, units: &[Unit]) {
        for &unit in units {
            if let Some(state) = self.state_mut(unit) {
                *state = UnitState::Buffered;
            }
        }
    }

    /// The update holding buffered `units` was not applied (e.g. a restart): they become pending again.
    pub fn unbuffer(&mut self, units: &[Unit]) {
        for &unit in units {
            if let Some(state) = self.state_mut(unit)
                && *state == UnitState::Buffered
            {
                *state = UnitState::Pending;
                self.pending += 1;
            }
        }
    }

    /// The update holding buffered `units` was applied.
    pub fn apply(&mut self, units: &[Unit]) {
        for &unit in units {
            if let Some(state) = self.state_mut(unit)
                && *state == UnitState::Buffered
            {
                *state = UnitState::Applied;
                self.done += 1;
            }
        }
    }

    /// Whether `unit` is still held by some lease.
    pub fn is_leased(&self, unit: Unit) -> bool {
        matches!(
            self.states.get(unit.shard as usize).and_then(|s| s.get(unit.batch as usize)),
            Some(UnitState::Leased { .. })
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shards() -> Vec<TrainShard> {
        vec![
            TrainShard { number: 0, hash: ShardHash([1; 32]), samples: 10 },
            TrainShard { number: 1, hash: ShardHash([2; 32]), samples: 7 },
        ]
    }

    #[test]
    fn batches_cover_every_sample_once_and_are_reproducible() {
        let plan = EpochPlan::new(3, 42, 4, shards(), &[]);
        assert_eq!(plan.total(), 3 + 2);
        for (s, shard) in shards().iter().enumerate() {
            let mut all: Vec<u32> = (0..shard.samples.div_ceil(4))
                .flat_map(|b| plan.samples(Unit { shard: s as u32, batch: b }).to_vec())
                .collect();
            all.sort_unstable();
            assert_eq!(all, (0..shard.samples).collect::<Vec<_>>());
        }
        let again = EpochPlan::new(3, 42, 4, shards(), &[]);
        let next = EpochPlan::new(4, 42, 4, shards(), &[]);
        let unit = Unit { shard: 0, batch: 0 };
        assert_eq!(plan.samples(unit), again.samples(unit));
        assert_ne!(plan.orders, next.orders, "each epoch reshuffles");
    }

    #[test]
    fn picks_prefer_cached_shards_and_short_batches_go_alone() {
        let mut plan = EpochPlan::new(0, 1, 4, shards(), &[]);
        let cached: HashSet<_> = [ShardHash([2; 32])].into();
        let pick = plan.pick(5, &cached, &HashSet::new(), 0, true).unwrap();
        assert_eq!(pick.units, vec![Unit { shard: 1, batch: 0 }], "full batch first, the short one not mixed in");
        let pick = plan.pick(5, &cached, &HashSet::new(), 0, true).unwrap();
        assert_eq!(pick.units, vec![Unit { shard: 1, batch: 1 }], "the short batch alone");
        let pick = plan.pick(5, &cached, &HashSet::new(), 0, true).unwrap();
        assert_eq!(pick.units, vec![Unit { shard: 0, batch: 0 }, Unit { shard: 0, batch: 1 }]);
        assert!(!pick.speculative);
    }

    #[test]
    fn lifecycle_is_exactly_once_with_speculative_copies() {
        let mut plan = EpochPlan::new(0, 1, 4, shards(), &[]);
        let none: HashSet<ShardHash> = HashSet::new();
        let mut leases = Vec::new();
        while let Some(pick) = plan.pick(1, &none, &HashSet::new(), leases.len() as u64, true) {
            if pick.speculative {
                leases.push(pick);
                break;
            }
            leases.push(pick);
        }
        assert_eq!(leases.len(), 6, "five units and then one speculative copy");
        let copy = leases.pop().unwrap();
        assert_eq!(copy.units, leases[0].units, "the oldest lease is copied");
        // The copy wins; the original can no longer be buffered.
        assert!(plan.can_buffer(&copy.units));
        plan.buffer(&copy.units);
        assert!(!plan.can_buffer(&leases[0].units));
        plan.release(&leases[0].units);
        assert!(!plan.is_leased(leases[0].units[0]));
        // A released unit is leased again.
        plan.release(&leases[1].units);
        let again = plan.pick(1, &none, &HashSet::new(), 9, true).unwrap();
        assert_eq!(again.units, leases[1].units);
        assert!(!again.speculative);
        for lease in leases.iter().skip(1) {
            plan.buffer(&lease.units);
        }
        assert!(plan.all_contributed());
        assert!(!plan.is_complete());
        let all: Vec<Unit> = leases.iter().flat_map(|l| l.units.clone()).collect();
        plan.apply(&all);
        assert!(plan.is_complete());
        assert_eq!(plan.applied_units().len(), 5);
        assert!(plan.pick(1, &none, &HashSet::new(), 10, true).is_none());
    }

    #[test]
    fn restored_plans_skip_applied_units() {
        let applied = [Unit { shard: 0, batch: 1 }, Unit { shard: 1, batch: 0 }];
        let mut plan = EpochPlan::new(2, 5, 4, shards(), &applied);
        assert_eq!(plan.applied(), 2);
        let none: HashSet<ShardHash> = HashSet::new();
        let mut picked = Vec::new();
        while let Some(pick) = plan.pick(1, &none, &HashSet::new(), 0, true) {
            if pick.speculative {
                break;
            }
            picked.extend(pick.units);
        }
        picked.sort();
        assert_eq!(picked, vec![Unit { shard: 0, batch: 0 }, Unit { shard: 0, batch: 2 }, Unit { shard: 1, batch: 1 }]);
        plan.buffer(&picked);
        plan.unbuffer(&picked[..1]);
        assert_eq!(plan.pick(1, &none, &HashSet::new(), 0, true).unwrap().units, picked[..1]);
    }
}
