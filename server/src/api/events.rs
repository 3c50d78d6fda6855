//! Live updates for the dashboard: `GET /api/projects/{id}/events` is a stream of server-sent events. The first
//! is a `project` event whose data is the project as `GET /api/projects/{id}` shows it, metrics history included;
//! each later one is a `delta` event whose data is a [`ProjectDelta`]: the fields that changed since the previous
//! event and the metric points recorded since, never the points sent before, so that an event costs what changed
//! and not the length of the history. Events are sent when something changes and at most every [`MIN_INTERVAL`].
//! When training goes back to an earlier checkpoint (the project's version drops and the metric points after it
//! are deleted), the stream sends the whole view again as a `project` event; a reconnection starts with one too.
//!
//! A stream ends after the project finishes or is cancelled (its last event shows that state), when the project
//! is deleted, when a project that is not training has not changed for [`IDLE_END`] (the browser's `EventSource`
//! reconnects after the `retry` interval, so that draft and paused projects cost no open coordinator watch, and
//! open streams never hold up a graceful shutdown for long), and after [`MAX_LIFETIME`], so that a logged-out
//! session's stream does not outlive the next reconnection's authentication.
//!
//! A stream takes no permit of the global concurrency limit once its head is sent; it holds one of its account's
//! `max_event_streams_per_account` places (429 `too_many_streams` beyond) and one of the server's
//! `max_event_streams` (503 `overloaded` beyond) until it ends or its client goes away.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use daig_shared::api::project::{ProjectDelta, ProjectView};
use daig_shared::api::training::MetricPoint;
use futures_util::Stream;
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::api::projects::view_without_metrics;
use crate::auth::CurrentUser;
use crate::db;
use crate::error::{AppError, ErrorBody};
use crate::extract::Path;
use crate::limits::Slot;
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

/// Streams the project's view, then its changes (owner only).
#[utoipa::path(get, path = "/api/projects/{id}/events", tag = "projects",
    security(("bearer" = []), ("session" = [])),
    params(("id" = i64, Path, description = "The project's id")),
    responses(
        (status = 200, description = "Server-sent events. The first is `event: project` with the whole project \
                                      (schema `ProjectView`, metrics history included) as JSON data; the next are \
                                      `event: delta` (schema `ProjectDelta`): the fields that changed, absent when \
                                      unchanged, and only the metric points recorded since the previous event, to \
                                      merge into the history by version. Sent on every change, at most twice a \
                                      second; a `project` event is sent again when training goes back to an earlier \
                                      checkpoint. The stream ends once the project is finished or cancelled, or after \
                                      a while without change (reconnect, as `EventSource` does, and start again from \
                                      the `project` event)", content_type = "text/event-stream"),
        (status = 401, description = "No valid credentials", body = ErrorBody),
        (status = 404, description = "No project with this id belongs to the caller", body = ErrorBody),
        (status = 429, description = "The account already holds `max_event_streams_per_account` streams open \
                                      (`too_many_streams`)", body = ErrorBody),
        (status = 503, description = "The server already holds `max_event_streams` streams open (`overloaded`)",
                                      body = ErrorBody),
    )
)]
pub async fn project_events(
    State(state): State<AppState>,
    user: CurrentUser,
    Path(id): Path<i64>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, AppError> {
    load_owned(&state, &user, id).await?;
    let slots = state.stream_slot(user.id)?;
    let now = Instant::now();
    let watcher = Watcher {
        state,
        user_id: user.id,
        id,
        last: None,
        last_point: i64::MIN,
        last_sent: None,
        status: None,
        had_coordinator: false,
        started: now,
        changed_at: now,
        sent_at: None,
        done: false,
        _slots: slots,
    };
    let stream = futures_util::stream::unfold(watcher, |mut w| async move { w.next().await.map(|e| (Ok(e), w)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// One stream's state.
struct Watcher {
    state: AppState,
    user_id: i64,
    id: i64,
    /// The project as last sent, without its metrics: what the next delta is measured against. `None` before the
    /// first event.
    last: Option<ProjectView>,
    /// The version of the newest metric point sent: the next delta carries the points after it.
    last_point: i64,
    /// That point as sent: the point of the current version is recorded again when an evaluation at the same
    /// version follows (an epoch's end), and is then sent again.
    last_sent: Option<MetricPoint>,
    /// The running coordinator's status, while there is one.
    status: Option<watch::Receiver<LiveStatus>>,
    /// Whether a coordinator ran during this stream: when it is gone but the project is still `running`, the
    /// server is shutting down (or restarting training) and the stream ends at once.
    had_coordinator: bool,
    started: Instant,
    changed_at: Instant,
    sent_at: Option<Instant>,
    done: bool,
    /// The stream's places in its account's budget and the server's, given back when the stream is dropped: when
    /// it ends or its client goes away.
    _slots: (Slot<i64>, Slot<i64>),
}

impl Watcher {
    /// The next event, or `None` to end the stream; an error ends it too, logged here once (the client
    /// reconnects).
    async fn next(&mut self) -> Option<Event> {
        match self.next_event().await {
            Ok(event) => event,
            Err(e) => {
                let cause = match &e {
                    AppError::Internal(cause) => format!("{cause:#}"),
                    other => other.to_string(),
                };
                tracing::warn!(project = self.id, "project events: {cause}");
                None
            }
        }
    }

    async fn next_event(&mut self) -> Result<Option<Event>, AppError> {
        loop {
            if self.done || self.started.elapsed() >= MAX_LIFETIME {
                return Ok(None);
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
            let Some(row) = db::projects::get_of_user(self.state.db(), self.id, self.user_id).await? else {
                return Ok(None);
            };
            // The row before the metrics: a project read as finished has its last point recorded already.
            let mut project = view_without_metrics(&self.state, &row).await?;
            let terminal = matches!(project.state, ProjectState::Finished | ProjectState::Cancelled);
            let event = match &self.last {
                Some(last) if project.version >= last.version => {
                    let mut delta = ProjectDelta::between(last, &project);
                    let since = self.last_point.saturating_sub(1);
                    let mut points = db::training::metrics_after(self.state.db(), self.id, since).await?;
                    if points.first().is_some_and(|p| Some(p) == self.last_sent.as_ref()) {
                        points.remove(0);
                    }
                    delta.metrics = points;
                    if delta.is_empty() { None } else { Some(("delta", json(&delta)?, delta.metrics.last().cloned())) }
                }
                // The first event, or training went back to an earlier checkpoint and the points after it are
                // gone: the whole view.
                _ => {
                    project.metrics = db::training::metrics_history(self.state.db(), self.id).await?;
                    let event = ("project", json(&project)?, project.metrics.last().cloned());
                    self.last_point = i64::MIN;
                    self.last_sent = None;
                    project.metrics = Vec::new();
                    Some(event)
                }
            };
            if let Some((name, data, newest_point)) = event {
                let now = Instant::now();
                self.sent_at = Some(now);
                self.changed_at = now;
                self.done = terminal;
                self.last = Some(project);
                if let Some(point) = newest_point {
                    self.last_point = point.version;
                    self.last_sent = Some(point);
                }
                return Ok(Some(Event::default().event(name).retry(RETRY).data(data)));
            }
            if terminal {
                return Ok(None);
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
                        return Ok(None);
                    }
                    if self.changed_at.elapsed() >= IDLE_END {
                        return Ok(None);
                    }
                    tokio::time::sleep(IDLE_POLL).await;
                }
            }
        }
    }
}

/// An event's data.
fn json(data: &impl Serialize) -> Result<String, AppError> {
    serde_json::to_string(data).map_err(|e| AppError::Internal(anyhow::Error::new(e).context("an event's JSON")))
}
