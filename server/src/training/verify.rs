//! Checks by recomputation, as the coordinator carries out the core's [`Effect::Verify`](super::core::Effect):
//! the lease's shards are read from the object store (a few recent ones kept in memory), its samples gathered
//! exactly as providers gather them, and its local steps run on the reference trainer on the blocking pool,
//! under the server's CPU budget for checks (`check_threads` permits shared by every project). The result goes
//! back to the core, which compares it with the contribution ([`daig_shared::train::verify`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use daig_shared::model::Model;
use daig_shared::train::lease::{self, LeaseWork};
use daig_shared::train::{LocalResult, Trainer};
use daig_shared::wire::{LeaseId, Normalisation, ShardHash, ShardSamples};
use tokio::sync::{Mutex, Semaphore};

use super::core::VerifyRequest;
use super::data::ShardObject;
use crate::state::AppState;

/// Shard bytes a project's checker keeps in memory.
const CACHE_BYTES: u64 = 64 << 20;

/// A check's outcome, for the coordinator's loop.
pub type CheckDone = (LeaseId, Result<LocalResult, String>);

/// Recomputes one project's contributions.
pub struct Checker {
    state: AppState,
    model: Arc<Model>,
    normalisation: Normalisation,
    objects: Arc<HashMap<ShardHash, ShardObject>>,
    cache: Arc<Mutex<ShardCache>>,
    permits: Arc<Semaphore>,
    /// Trainers not in use, reused across checks.
    trainers: Arc<std::sync::Mutex<Vec<Trainer>>>,
}

impl Checker {
    pub fn new(
        state: AppState,
        model: Arc<Model>,
        normalisation: Normalisation,
        objects: Arc<HashMap<ShardHash, ShardObject>>,
    ) -> Checker {
        let permits = state.training().check_permits();
        Checker {
            state,
            model,
            normalisation,
            objects,
            cache: Arc::new(Mutex::new(ShardCache::default())),
            permits,
            trainers: Arc::default(),
        }
    }

    /// Starts the check of `request`; its result is sent on `done`.
    pub fn check(&self, request: VerifyRequest, done: tokio::sync::mpsc::Sender<CheckDone>) {
        let state = self.state.clone();
        let model = Arc::clone(&self.model);
        let normalisation = self.normalisation.clone();
        let objects = Arc::clone(&self.objects);
        let cache = Arc::clone(&self.cache);
        let permits = Arc::clone(&self.permits);
        let trainers = Arc::clone(&self.trainers);
        tokio::spawn(async move {
            let lease = request.lease;
            let result = async {
                let shards = load(&state, &objects, &cache, &request.selection).await?;
                let Ok(_permit) = permits.acquire_owned().await else {
                    return Err("the server is shutting down".to_owned());
                };
                let trainer = trainers.lock().map_err(|_| "a poisoned lock".to_owned())?.pop();
                let trainers_back = Arc::clone(&trainers);
                tokio::task::spawn_blocking(move || {
                    let mut trainer = trainer.unwrap_or_else(|| Trainer::new(&model));
                    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        recompute(
                            &mut trainer,
                            &model,
                            &normalisation,
                            &shards,
                            &request.selection,
                            &request.params,
                            &request.work,
                        )
                    }));
                    match result {
                        Ok(result) => {
                            if let Ok(mut idle) = trainers_back.lock() {
                                idle.push(trainer);
                            }
                            result
                        }
                        Err(_) => Err("the recomputation panicked".to_owned()),
                    }
                })
                .await
                .map_err(|e| format!("the recomputation did not finish: {e}"))?
            }
            .await;
            let _ = done.send((lease, result)).await;
        });
    }
}

/// Gathers the lease's samples from `shards` and runs its work from `params`.
fn recompute(
    trainer: &mut Trainer,
    model: &Model,
    normalisation: &Normalisation,
    shards: &HashMap<ShardHash, Bytes>,
    selection: &[ShardSamples],
    params: &[f32],
    work: &LeaseWork,
) -> Result<LocalResult, String> {
    let inputs = lease::gather(model, normalisation, selection, |h| shards.get(&h).map(|b| &b[..]))?;
    lease::recompute(trainer, model, &inputs, params, work).map_err(|e| e.to_string())
}

/// The bytes of the shards `selection` names, from the cache or the store.
async fn load(
    state: &AppState,
    objects: &HashMap<ShardHash, ShardObject>,
    cache: &Mutex<ShardCache>,
    selection: &[ShardSamples],
) -> Result<HashMap<ShardHash, Bytes>, String> {
    let mut shards = HashMap::new();
    for part in selection {
        if shards.contains_key(&part.shard) {
            continue;
        }
        if let Some(bytes) = cache.lock().await.get(part.shard) {
            shards.insert(part.shard, bytes);
            continue;
        }
        let object = objects.get(&part.shard).ok_or_else(|| format!("shard {} is not in the project", part.shard))?;
        let bytes = state
            .store()
            .get(&object.key, object.size_bytes)
            .await
            .map_err(|e| format!("cannot read shard {}: {e}", part.shard))?;
        cache.lock().await.insert(part.shard, bytes.clone());
        shards.insert(part.shard, bytes);
    }
    Ok(shards)
}

/// Recently used shards, the oldest dropped past [`CACHE_BYTES`].
#[derive(Default)]
struct ShardCache {
    shards: HashMap<ShardHash, Bytes>,
    order: VecDeque<ShardHash>,
    bytes: u64,
}

impl ShardCache {
    fn get(&mut self, shard: ShardHash) -> Option<Bytes> {
        let bytes = self.shards.get(&shard)?.clone();
        self.order.retain(|h| *h != shard);
        self.order.push_back(shard);
        Some(bytes)
    }

    fn insert(&mut self, shard: ShardHash, bytes: Bytes) {
        if let Some(old) = self.shards.insert(shard, bytes.clone()) {
            self.bytes -= old.len() as u64;
            self.order.retain(|h| *h != shard);
        }
        self.bytes += bytes.len() as u64;
        self.order.push_back(shard);
        while self.bytes > CACHE_BYTES && self.order.len() > 1 {
            let Some(oldest) = self.order.pop_front() else { break };
            if let Some(gone) = self.shards.remove(&oldest) {
                self.bytes -= gone.len() as u64;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_drops_the_least_recently_used_shards_past_its_budget() {
        let mut cache = ShardCache::default();
        let big = Bytes::from(vec![0u8; (CACHE_BYTES / 2) as usize]);
        cache.insert(ShardHash([1; 32]), big.clone());
        cache.insert(ShardHash([2; 32]), big.clone());
        assert!(cache.get(ShardHash([1; 32])).is_some());
        cache.insert(ShardHash([3; 32]), big);
        assert!(cache.get(ShardHash([2; 32])).is_none(), "the least recently used went");
        assert!(cache.get(ShardHash([1; 32])).is_some() && cache.get(ShardHash([3; 32])).is_some());
        assert_eq!(cache.bytes, CACHE_BYTES);
    }
}
