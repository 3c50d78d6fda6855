//! Passwords: argon2id hashes (the crate's default parameters, OWASP's minimum: 19 MiB, 2 passes), computed on
//! [`HASHING_THREADS`] threads of their own so that hashing neither stalls the async workers nor grows memory.
//!
//! Each hash takes 19 MiB while it runs. On tokio's blocking pool, every request waiting for a hash got a thread
//! of its own (up to 512), and sign-ups and log-ins from many addresses, each within its rate limit, made the
//! server's memory grow by 19 MiB per request in flight (1.5 GiB for 80 at once in the abuse suite, kept by the
//! allocator after). Here at most [`HASHING_THREADS`] run at once, each in memory its thread allocated once and
//! reuses: left to the argon2 crate, each hash allocates and frees its 19 MiB, and glibc's allocator kept many
//! freed blocks (256 MiB after 40 sign-ups at once on two threads). Hashing is bound by the CPU, so a few at once
//! lose no throughput; requests wait in order, each within the server's request timeout and concurrency limit,
//! and one whose client has gone is not computed.

use std::cell::RefCell;
use std::sync::mpsc;
use std::sync::{LazyLock, Mutex};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use tokio::sync::oneshot;

use crate::error::AppError;

/// Threads that compute hashes: the machine's cores, at least two.
pub static HASHING_THREADS: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(2, std::num::NonZero::get).max(2));

/// A hash to compute; it answers through its own channel.
type Job = Box<dyn FnOnce() + Send>;

/// The queue of the hashing threads, started on first use.
static HASHING: LazyLock<mpsc::Sender<Job>> = LazyLock::new(|| {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = std::sync::Arc::new(Mutex::new(rx));
    for i in 0..*HASHING_THREADS {
        let rx = std::sync::Arc::clone(&rx);
        std::thread::Builder::new()
            .name(format!("password-hash-{i}"))
            .spawn(move || {
                loop {
                    // Nothing awaits under this std lock: a thread holds it only to take the next job.
                    let job = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner).recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                }
            })
            .expect("a password hashing thread");
    }
    tx
});

/// Runs `work` on a hashing thread, unless the caller has gone by the time its turn comes.
async fn on_hashing_thread<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, AppError> {
    let (tx, rx) = oneshot::channel();
    let job: Job = Box::new(move || {
        if !tx.is_closed() {
            let _ = tx.send(work());
        }
    });
    HASHING.send(job).map_err(|_| AppError::Internal(anyhow::anyhow!("the password hashing threads are gone")))?;
    rx.await.map_err(|_| AppError::Internal(anyhow::anyhow!("a password hashing thread failed")))
}

thread_local! {
    /// The argon2 memory of this hashing thread, allocated at its first hash and reused by every later one.
    static MEMORY: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `work` on the first `blocks` blocks of this thread's argon2 memory.
fn with_memory<T>(blocks: usize, work: impl FnOnce(&mut [Block]) -> T) -> T {
    MEMORY.with_borrow_mut(|memory| {
        if memory.len() < blocks {
            memory.resize(blocks, Block::default());
        }
        work(&mut memory[..blocks])
    })
}

/// The PHC string of `password` hashed with argon2id at the default parameters and a random salt, on this
/// thread's memory: what `Argon2::default().hash_password` gives.
fn hash_here(password: &[u8]) -> Result<String, String> {
    let params = Params::default();
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let salt = argon2::password_hash::try_generate_salt().map_err(|e| format!("salt: {e}"))?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(password, &salt, &mut out, memory)
    })
    .map_err(|e| e.to_string())?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(|e| e.to_string())?,
        salt: Some(Salt::new(&salt).map_err(|e| e.to_string())?),
        hash: Some(Output::new(&out).map_err(|e| e.to_string())?),
    };
    Ok(phc.to_string())
}

/// Whether `password` hashes to the PHC string `phc` (its algorithm, version, parameters and salt), on this
/// thread's memory; false for a string that does not parse.
fn matches_here(password: &[u8], phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else { return false };
    let (Ok(algorithm), Some(salt), Some(expected)) =
        (Algorithm::try_from(parsed.algorithm.as_str()), parsed.salt, parsed.hash)
    else {
        return false;
    };
    let Ok(version) = parsed.version.map_or(Ok(Version::default()), Version::try_from) else { return false };
    let Ok(params) = Params::try_from(&parsed) else { return false };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let hashed = with_memory(params.block_count(), |memory| {
        argon2.hash_password_into_with_memory(password, salt.as_ref(), &mut out, memory)
    });
    // `Output`'s comparison takes the same time wherever the bytes differ.
    hashed.is_ok() && Output::new(&out).is_ok_and(|out| out == expected)
}

/// Hashes `password` into a PHC string.
///
/// # Errors
/// [`AppError::Internal`] if the hasher or its thread fails.
pub async fn hash(password: String) -> Result<String, AppError> {
    on_hashing_thread(move || {
        hash_here(password.as_bytes()).map_err(|e| AppError::Internal(anyhow::anyhow!("argon2 hash: {e}")))
    })
    .await?
}

/// Whether `password` matches the PHC string `hash`; with no hash (an unknown user) it checks against a dummy
/// hash and answers false, so that both cases take the same time.
///
/// # Errors
/// [`AppError::Internal`] if its thread fails.
pub async fn verify(password: String, hash: Option<String>) -> Result<bool, AppError> {
    static DUMMY: LazyLock<String> = LazyLock::new(|| {
        use argon2::PasswordHasher as _;
        Argon2::default()
            .hash_password_with_salt(b"not a password of anyone", b"daig-dummy-salt!")
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    on_hashing_thread(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let matches = matches_here(password.as_bytes(), &hash);
        known && matches
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{HASHING_THREADS, hash, on_hashing_thread, verify};

    #[tokio::test]
    async fn hashes_run_on_the_hashing_threads_a_few_at_once() {
        // Every hashing thread busy: a hash waits for one.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let released = std::sync::Arc::new(std::sync::Mutex::new(released));
        let mut busy = Vec::new();
        for _ in 0..*HASHING_THREADS {
            let released = std::sync::Arc::clone(&released);
            busy.push(tokio::spawn(on_hashing_thread(move || released.lock().unwrap().recv().unwrap())));
        }
        let hashing = tokio::spawn(hash("correct horse battery".into()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!hashing.is_finished(), "hashed while every hashing thread was busy");
        for _ in 0..*HASHING_THREADS {
            release.send(()).unwrap();
        }
        let phc = tokio::time::timeout(Duration::from_secs(30), hashing).await.unwrap().unwrap().unwrap();
        assert!(phc.starts_with("$argon2id$"), "{phc}");
        assert!(verify("correct horse battery".into(), Some(phc.clone())).await.unwrap());
        assert!(!verify("wrong".into(), Some(phc)).await.unwrap());
        assert!(!verify("correct horse battery".into(), None).await.unwrap());
        for task in busy {
            task.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn hashes_are_the_argon2_crates_both_ways() {
        use argon2::password_hash::{PasswordHasher as _, PasswordVerifier as _};
        // A hash of the crate's own (as stored before the hashing threads) verifies here, and one of here there.
        let theirs = argon2::Argon2::default().hash_password(b"correct horse battery").unwrap().to_string();
        assert!(verify("correct horse battery".into(), Some(theirs.clone())).await.unwrap());
        assert!(!verify("correct horse battery!".into(), Some(theirs)).await.unwrap());
        let ours = hash("correct horse battery".into()).await.unwrap();
        assert!(argon2::Argon2::default().verify_password(b"correct horse battery", ours.as_str()).is_ok());
        assert!(argon2::Argon2::default().verify_password(b"wrong", ours.as_str()).is_err());
        assert!(!verify("x".into(), Some("not a hash".into())).await.unwrap());
    }
}
