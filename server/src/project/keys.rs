//! The object-store key layout, all of it: everything of project `id` lies under `projects/{id}/`.
//!
//! ```text
//! projects/{id}/
//!     shards/gen-{g}/{role}-{number:05}.bin      a committed dataset's shards, one generation per commit
//!     checkpoints/{version:012}/params.safetensors
//!     checkpoints/{version:012}/state.bin
//!     model/model.safetensors                    the trained model
//!     model/metrics.json                         its metrics history
//! ```
//!
//! Uploads in progress are files on local disk, under `<data_dir>/uploads/{id}/` ([`uploads_dir`]).

use std::path::PathBuf;

use crate::config::Settings;

/// The prefix holding everything of project `id`.
pub fn prefix(id: i64) -> String {
    format!("projects/{id}")
}

/// The key of the trained model.
pub fn model_key(id: i64) -> String {
    format!("projects/{id}/model/model.safetensors")
}

/// The key of a finished project's metrics file.
pub fn metrics_key(id: i64) -> String {
    format!("projects/{id}/model/metrics.json")
}

/// The keys of a checkpoint's objects: its parameters and its trainer state.
pub fn checkpoint_keys(id: i64, version: u64) -> (String, String) {
    let dir = format!("projects/{id}/checkpoints/{version:012}");
    (format!("{dir}/params.safetensors"), format!("{dir}/state.bin"))
}

/// The prefix of every generation of the project's shards.
pub fn shards_prefix(id: i64) -> String {
    format!("{}/shards", prefix(id))
}

/// The prefix of one generation of the project's shards.
pub fn shard_generation_prefix(id: i64, generation: u64) -> String {
    format!("{}/gen-{generation}", shards_prefix(id))
}

/// The key of a shard under a generation's prefix (see [`shard_generation_prefix`]).
pub fn shard_key(generation_prefix: &str, role: &str, number: impl std::fmt::Display) -> String {
    format!("{generation_prefix}/{role}-{number:05}.bin")
}

/// The generation of a shard key `<shards_prefix>/gen-<N>/...`; keys of the layout before generations count as 0.
pub fn generation_of(key: &str, shards_prefix: &str) -> Option<u64> {
    let rest = key.strip_prefix(shards_prefix)?.strip_prefix('/')?;
    match rest.split_once('/') {
        Some((generation, _)) => generation.strip_prefix("gen-")?.parse().ok(),
        None => Some(0),
    }
}

/// The local directory of project `id`'s uploads in progress.
pub fn uploads_dir(settings: &Settings, id: i64) -> PathBuf {
    settings.uploads_dir().join(id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_under_the_project_prefix() {
        let p = format!("{}/", prefix(7));
        let (params, state) = checkpoint_keys(7, 3);
        let generation = shard_generation_prefix(7, 2);
        for key in [model_key(7), metrics_key(7), params, state, shard_key(&generation, "train", 4)] {
            assert!(key.starts_with(&p), "{key}");
        }
        assert_eq!(shard_key(&generation, "train", 4), "projects/7/shards/gen-2/train-00004.bin");
        assert_eq!(generation_of("projects/7/shards/gen-2/train-00004.bin", &shards_prefix(7)), Some(2));
        assert_eq!(generation_of("projects/7/shards/train-00004.bin", &shards_prefix(7)), Some(0));
    }
}
