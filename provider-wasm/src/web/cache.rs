//! Shards cached in the browser's Cache Storage, keyed by content hash, under a byte budget (least recently
//! stored evicted first). A cache that cannot be opened (storage disabled, a private window) leaves the provider
//! working without one.

use std::cell::RefCell;

use daig_shared::wire::ShardHash;
use js_sys::Uint8Array;
use wasm_bindgen::JsCast as _;
use wasm_bindgen_futures::JsFuture;
use web_sys::{Cache, Headers, Response, ResponseInit, WorkerGlobalScope};

/// The Cache Storage cache's name.
const CACHE_NAME: &str = "daig-shards-v1";
const SIZE_HEADER: &str = "x-daig-size";
const TIME_HEADER: &str = "x-daig-stored";

struct Entry {
    hash: ShardHash,
    size: u64,
    stored: f64,
}

pub struct ShardCache {
    cache: Option<Cache>,
    /// Keys are `<base>/<hex>`; Cache Storage wants http(s) URLs.
    base: String,
    max_bytes: u64,
    entries: RefCell<Vec<Entry>>,
}

impl ShardCache {
    /// Opens the cache of the server at `socket_url` and reads its index.
    pub async fn open(socket_url: &str, max_bytes: u64) -> ShardCache {
        let http = socket_url.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1);
        let base = format!("{}/__daig-shards", http.trim_end_matches("/ws/provider"));
        let cache = open_cache().await;
        let mut entries = Vec::new();
        if let Some(cache) = &cache
            && let Ok(keys) = JsFuture::from(cache.keys()).await
        {
            for request in js_sys::Array::from(&keys).iter() {
                let Ok(request) = request.dyn_into::<web_sys::Request>() else { continue };
                let url = request.url();
                let Some(hash) = url.strip_prefix(&format!("{base}/")).and_then(|hex| hex.parse::<ShardHash>().ok())
                else {
                    continue;
                };
                let Ok(response) = JsFuture::from(cache.match_with_str(&url)).await else { continue };
                let Ok(response) = response.dyn_into::<Response>() else { continue };
                let header =
                    |name: &str| response.headers().get(name).ok().flatten().and_then(|v| v.parse::<f64>().ok());
                entries.push(Entry {
                    hash,
                    size: header(SIZE_HEADER).unwrap_or(0.0) as u64,
                    stored: header(TIME_HEADER).unwrap_or(0.0),
                });
            }
        }
        ShardCache { cache, base, max_bytes, entries: RefCell::new(entries) }
    }

    fn key(&self, shard: ShardHash) -> String {
        format!("{}/{shard}", self.base)
    }

    /// The shards held, most recently stored first.
    pub fn list(&self) -> Vec<ShardHash> {
        let mut entries: Vec<(f64, ShardHash)> = self.entries.borrow().iter().map(|e| (e.stored, e.hash)).collect();
        entries.sort_by(|a, b| b.0.total_cmp(&a.0));
        entries.into_iter().map(|(_, h)| h).collect()
    }

    /// The shard's bytes, or `None` when it is not held or cannot be read.
    pub async fn load(&self, shard: ShardHash) -> Option<Vec<u8>> {
        let cache = self.cache.as_ref()?;
        let response = JsFuture::from(cache.match_with_str(&self.key(shard))).await.ok()?;
        let response = response.dyn_into::<Response>().ok()?;
        let buffer = JsFuture::from(response.array_buffer().ok()?).await.ok()?;
        Some(Uint8Array::new(&buffer).to_vec())
    }

    /// Stores a shard, then evicts the oldest others beyond the budget; one larger than the budget is not kept.
    pub async fn store(&self, shard: ShardHash, bytes: &[u8]) {
        let Some(cache) = &self.cache else { return };
        let size = bytes.len() as u64;
        if size > self.max_bytes || self.entries.borrow().iter().any(|e| e.hash == shard) {
            return;
        }
        let now = js_sys::Date::now();
        let headers = Headers::new().ok();
        if let Some(h) = &headers {
            let _ = h.set(SIZE_HEADER, &size.to_string());
            let _ = h.set(TIME_HEADER, &now.to_string());
            let _ = h.set("content-type", "application/octet-stream");
        }
        let init = ResponseInit::new();
        if let Some(h) = &headers {
            init.set_headers(h);
        }
        let body = Uint8Array::from(bytes);
        let Ok(response) = Response::new_with_opt_buffer_source_and_init(Some(&body), &init) else { return };
        if JsFuture::from(cache.put_with_str(&self.key(shard), &response)).await.is_err() {
            return;
        }
        let evict: Vec<ShardHash> = {
            let mut entries = self.entries.borrow_mut();
            entries.push(Entry { hash: shard, size, stored: now });
            entries.sort_by(|a, b| a.stored.total_cmp(&b.stored));
            let mut total: u64 = entries.iter().map(|e| e.size).sum();
            let mut evict = Vec::new();
            while total > self.max_bytes && entries.len() > 1 {
                let old = entries.remove(0);
                total -= old.size;
                evict.push(old.hash);
            }
            evict
        };
        for hash in evict {
            let _ = JsFuture::from(cache.delete_with_str(&self.key(hash))).await;
        }
    }

    /// Drops a shard (a damaged copy).
    pub async fn remove(&self, shard: ShardHash) {
        self.entries.borrow_mut().retain(|e| e.hash != shard);
        if let Some(cache) = &self.cache {
            let _ = JsFuture::from(cache.delete_with_str(&self.key(shard))).await;
        }
    }
}

async fn open_cache() -> Option<Cache> {
    let scope: WorkerGlobalScope = js_sys::global().dyn_into().ok()?;
    let caches = scope.caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok()?.dyn_into::<Cache>().ok()
}
