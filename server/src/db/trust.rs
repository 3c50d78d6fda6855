//! Trust: providers' persistent identities and their standing, shut-outs, address bans, and credit withdrawn
//! from shut-out providers.

use daig_shared::api::training::ShutOutView;
use sqlx::{SqliteConnection, SqliteExecutor};

pub const UPSERT_IDENTITY: &str = "INSERT INTO provider_identities (key_hash, first_seen, last_seen) VALUES (?, ?, ?) \
     ON CONFLICT(key_hash) DO UPDATE SET last_seen = excluded.last_seen \
     RETURNING id, verified, shut_out_reason";
pub const ACTIVE_BAN: &str = "SELECT until, reason FROM address_bans WHERE address = ? AND until > ?";
pub const CHECK_PASSED: &str = "UPDATE provider_identities SET verified = verified + 1 WHERE id = (SELECT identity_id FROM providers WHERE id = ?)";
pub const SHUT_OUT_CONNECTION: &str =
    "UPDATE providers SET shut_out_project = ?, shut_out_at = ?, shut_out_reason = ? WHERE id = ?";
pub const SHUT_OUT_IDENTITY: &str = "UPDATE provider_identities SET shut_out_at = ?, shut_out_reason = ? \
     WHERE id = (SELECT identity_id FROM providers WHERE id = ?) AND shut_out_at IS NULL";
pub const BAN_ADDRESS: &str = "INSERT INTO address_bans (address, until, reason, created_at) \
     SELECT address, ?, ?, ? FROM providers WHERE id = ? AND address IS NOT NULL \
     ON CONFLICT(address) DO UPDATE SET until = max(until, excluded.until), reason = excluded.reason";
pub const WITHDRAW_CREDIT: &str = "UPDATE contributions SET withdrawn_at = ? WHERE withdrawn_at IS NULL \
     AND provider_id IN (SELECT id FROM providers WHERE id = ? OR identity_id = \
     (SELECT identity_id FROM providers WHERE id = ? AND identity_id IS NOT NULL))";
pub const SHUT_OUT_OF_PROJECT: &str = "SELECT id, backend, adapter, address, shut_out_at, shut_out_reason \
     FROM providers WHERE shut_out_project = ? ORDER BY shut_out_at DESC, id DESC LIMIT 100";
pub const DELETE_EXPIRED_BANS: &str = "DELETE FROM address_bans WHERE until <= ?";

/// A persistent identity as a connection finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: i64,
    /// Checks it passed, on every connection so far.
    pub verified: u64,
    /// Why it was shut out, if it was: it is refused.
    pub shut_out: Option<String>,
}

/// The identity of key hash `key_hash` (created when new), its last sighting set to `now`.
pub async fn identity(db: impl SqliteExecutor<'_>, key_hash: &str, now: i64) -> Result<Identity, sqlx::Error> {
    let (id, verified, shut_out): (i64, i64, Option<String>) =
        sqlx::query_as(UPSERT_IDENTITY).bind(key_hash).bind(now).bind(now).fetch_one(db).await?;
    Ok(Identity { id, verified: u64::try_from(verified).unwrap_or(0), shut_out })
}

/// The ban on `address` still in force at `now`: until when, and why.
pub async fn active_ban(
    db: impl SqliteExecutor<'_>,
    address: &str,
    now: i64,
) -> Result<Option<(i64, String)>, sqlx::Error> {
    sqlx::query_as(ACTIVE_BAN).bind(address).bind(now).fetch_optional(db).await
}

/// Provider connection `provider` passed a check: its identity's standing grows (a provider without a key
/// has none to keep).
pub async fn check_passed(db: impl SqliteExecutor<'_>, provider: i64) -> Result<(), sqlx::Error> {
    sqlx::query(CHECK_PASSED).bind(provider).execute(db).await?;
    Ok(())
}

/// Provider connection `provider` failed a check in `project`: within `tx`, the connection and its identity
/// are marked shut out with `reason`, its address is banned until `ban_until` (if given), and the credit of
/// every connection of the identity is withdrawn.
pub async fn shut_out(
    tx: &mut SqliteConnection,
    provider: i64,
    project: i64,
    reason: &str,
    ban_until: Option<i64>,
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(SHUT_OUT_CONNECTION).bind(project).bind(now).bind(reason).bind(provider).execute(&mut *tx).await?;
    sqlx::query(SHUT_OUT_IDENTITY).bind(now).bind(reason).bind(provider).execute(&mut *tx).await?;
    if let Some(until) = ban_until {
        // Bans are written here only, so this is where the ended ones are forgotten.
        delete_expired_bans(&mut *tx, now).await?;
        sqlx::query(BAN_ADDRESS).bind(until).bind(reason).bind(now).bind(provider).execute(&mut *tx).await?;
    }
    sqlx::query(WITHDRAW_CREDIT).bind(now).bind(provider).bind(provider).execute(&mut *tx).await?;
    Ok(())
}

/// The providers shut out of `project`, latest first (at most 100).
pub async fn shut_out_of_project(db: impl SqliteExecutor<'_>, project: i64) -> Result<Vec<ShutOutView>, sqlx::Error> {
    type Row = (i64, String, String, Option<String>, i64, String);
    let rows: Vec<Row> = sqlx::query_as(SHUT_OUT_OF_PROJECT).bind(project).fetch_all(db).await?;
    Ok(rows
        .into_iter()
        .map(|(provider_id, backend, adapter, address, at_unix, reason)| ShutOutView {
            provider_id,
            backend,
            adapter,
            address,
            at_unix,
            reason,
        })
        .collect())
}

/// Forgets bans that ended.
pub async fn delete_expired_bans(db: impl SqliteExecutor<'_>, now: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(DELETE_EXPIRED_BANS).bind(now).execute(db).await?.rows_affected())
}
