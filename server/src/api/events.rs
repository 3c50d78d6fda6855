//! Live updates for the dashboard: `GET /api/projects/{id}/events` is a stream of server-sent events, each a
//! `project` event whose data is the project as `GET /api/projects/{id}` shows it, sent when it changes and at
//! most every [`MIN_INTERVAL`].
//!
//! A stream ends after the project finishes or is cancelled (its last event shows that state), when the project
//! is deleted, when a project that is not training has not changed for [`IDLE_END`] (the browser's `EventSource`
//! reconnects after the `retry` interval, so that draft and paused projects cost no open coordinator watch, and
//! open streams never hold up a graceful shutdown for long), and after [`MAX_LIFETIME`], so that a logged-out
//! session's stream does not outlive the next reconnection's authentication.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::projects::view;
use crate::auth::CurrentUser;
use crate::db;
use crate::error::{AppError, ErrorBody};
use crate::extract::Path;
use crate::project::{ProjectState, load_owned};
use crate::state::AppState;
use crate::training::LiveStatus;

/// Least time between two events of one stream.
pub const MIN_INTERVAL: Duration = Duration::from_millis(500);
/// How long a stream of a project without a running coordinator waits for a change before it ends.
pub const IDLE_END: Duration = Duration::from_secs(5);
/// How long a stream lasts at most before the client reconnects.
pub const MAX_LIFETIME: Duration = Duration::from_secs(300);
/// The reconnection delay sent to the browser.
const RETRY: Duration = Duration::from_secs(1);
/// How long a running project's stream waits for its coordinator before it looks at the database again (a pause
/// or cancel through the API).
const RUNNING_POLL: Duration = Duration::from_secs(2);
/// How often a stream without a running coordinator looks at the database.
const IDLE_POLL: Duration = Duration::from_millis(1000);

/// Streams the project's view whenever it changes (owner only).
#[utoipa::path(get, path = "/api/projects/{id}/events", tag = "projects",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "Server-sent events: `event: project` with the project (schema `ProjectView`) \
                                      as JSON data, on every change, at most twice a second; the stream ends once \
                                      the project is finished or cancelled, or after a while without change \
                                      (reconnect, as `EventSource` does)", content_type = "text/event-stream"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
    )
)]
pub async fn project_events(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    load_owned(&state, &user, id).await?;
    let now = Instant::now();
    let watcher = Watcher {
        state,
        user_id: user.id,
        id,
        last: None,
        status: None,
        had_coordinator: false,
        started: now,
        changed_at: now,
        sent_at: None,
        done: false,
    };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move { w.next().await.map(|e| (Ok(e), w)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One stream's state.
struct Watcher {
    state: AppState,
    user_id: i64,
    id: i64,
    /// The JSON last sent, to send only changes.
    last: Option<String>,
    /// The running coordinator's status, while there is one.
    status: Option<watch::Receiver<LiveStatus>>,
    /// Whether a coordinator ran during this stream: when it is gone but the project is still `running`, the
    /// server is shutting down (or restarting training) and the stream ends at once.
    had_coordinator: bool,
    started: Instant,
    changed_at: Instant,
    sent_at: Option<Instant>,
    done: bool,
}

impl Watcher {
    /// The next event, or `None` to end the stream.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done || self.started.elapsed() >= MAX_LIFETIME {
                return None;
            }
            if let Some(at) = self.sent_at {
                tokio::time::sleep_until(at + MIN_INTERVAL).await;
            }
            if self.status.is_none()
                && let Some(handle) = self.state.training().get(self.id)
            {
                let mut status = handle.status.clone();
                status.borrow_and_update();
                self.status = Some(status);
                self.had_coordinator = true;
            }
            // The project is read again every time: a pause or cancel through the API changes only the database.
            let row = db::projects::get_of_user(self.state.db(), self.id, self.user_id).await;
            let row = match row {
                Ok(Some(row)) => row,
                Ok(None) => return None,
                Err(e) => {
                    tracing::warn!(project = self.id, "project events: {e}");
                    return None;
                }
            };
            let project = match view(&self.state, &row).await {
                Ok(project) => project,
                Err(e) => {
                    // Logged here once; the stream just ends and the client reconnects.
                    tracing::warn!(project = self.id, "project events: {e}");
                    return None;
                }
            };
            let terminal = matches!(project.state, ProjectState::Finished | ProjectState::Cancelled);
            let json = match serde_json::to_string(&project) {
                Ok(json) => json,
                Err(e) => {
                    tracing::warn!(project = self.id, "project events: {e}");
                    return None;
                }
            };
            if self.last.as_deref() != Some(json.as_str()) {
                let now = Instant::now();
                self.sent_at = Some(now);
                self.changed_at = now;
                self.done = terminal;
                let event = Event::default().event("project").retry(RETRY).data(json.as_str());
                self.last = Some(json);
                return Some(event);
            }
            if terminal {
                return None;
            }
            match &mut self.status {
                Some(status) => match tokio::time::timeout(RUNNING_POLL, status.changed()).await {
                    Ok(Ok(())) => {
                        status.borrow_and_update();
                    }
                    // The coordinator stopped: paused, finished, cancelled, or the server is shutting down.
                    Ok(Err(_)) => self.status = None,
                    Err(_) => {}
                },
                None => {
                    if project.state == ProjectState::Running && self.had_coordinator {
                        return None;
                    }
                    if self.changed_at.elapsed() >= IDLE_END {
                        return None;
                    }
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }
}
