//! Passwords: argon2id hashes (the crate's default parameters, OWASP's minimum: 19 MiB, 2 passes), computed on
//! [`HASHING_THREADS`] threads of their own so that hashing neither stalls the async workers nor grows memory.
//!
//! Each hash takes 19 MiB while it runs. On tokio's blocking pool, every request waiting for a hash got a thread
//! of its own (up to 512), and sign-ups and log-ins from many addresses, each within its rate limit, made the
//! server's memory grow by 19 MiB per request in flight (1.5 GiB for 80 at once in the abuse suite, kept by the
//! allocator after). Here at most [`HASHING_THREADS`] run at once, and the memory they leave does not grow with the
//! load: glibc's allocator still keeps some freed blocks (measured: 256 MiB after 40 sign-ups at once on two
//! cores, the same after 160; 22 MiB with `MALLOC_MMAP_THRESHOLD_=4194304`), which hashing into memory owned by
//! each thread would avoid. Hashing is bound by the CPU, so a few at once lose no throughput; requests wait in
//! order, each within the server's request timeout and concurrency limit, and one whose client has gone is not
//! computed.

use std::sync::mpsc;
use std::sync::{LazyLock, Mutex};

use argon2::Argon2;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
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

/// Hashes `password` into a PHC string.
///
/// # Errors
/// [`AppError::Internal`] if the hasher or its thread fails.
pub async fn hash(password: String) -> Result<String, AppError> {
    on_hashing_thread(move || {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|hash| hash.to_string())
            .map_err(|e| AppError::Internal(anyhow::anyhow!("argon2 hash: {e}")))
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
        Argon2::default()
            .hash_password_with_salt(b"not a password of anyone", b"daig-dummy-salt!")
            .map(|h| h.to_string())
            .unwrap_or_default()
    });
    on_hashing_thread(move || {
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| DUMMY.clone());
        let matches = Argon2::default().verify_password(password.as_bytes(), hash.as_str()).is_ok();
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
}
