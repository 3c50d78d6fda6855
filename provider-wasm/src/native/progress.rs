//! The progress line on stderr: backend, project, samples per second and contributions. On a terminal it
//! is redrawn in place every second and log lines clear it first ([`LogWriter`]); otherwise it is printed
//! as a plain line every [`PLAIN_EVERY`] ticks, so that logs stay readable.

use std::collections::VecDeque;
use std::io::{self, IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use daig_shared::wire::ProjectId;

use crate::session::SessionStats;

/// How often the line is printed when stderr is not a terminal, in ticks of a second.
const PLAIN_EVERY: u32 = 10;

/// The window the samples per second are measured over.
const RATE_WINDOW: Duration = Duration::from_secs(10);

/// Clears the progress line before each log line on a terminal, so that logs and the line do not mix.
#[derive(Clone, Copy, Debug)]
pub struct LogWriter;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine { started: false }
    }
}

/// One log record on stderr.
pub struct LogLine {
    started: bool,
}

impl io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut err = io::stderr().lock();
        if !self.started && err.is_terminal() {
            err.write_all(b"\r\x1b[2K")?;
        }
        self.started = true;
        err.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

/// What the line shows and how fast samples go by.
#[derive(Debug)]
pub struct Progress {
    enabled: bool,
    terminal: bool,
    ticks: u32,
    pub backend: String,
    pub project: Option<ProjectId>,
    pub connected: bool,
    /// Samples trained at recent ticks, for the rate.
    history: VecDeque<(Instant, u64)>,
}

impl Progress {
    pub fn new(enabled: bool, backend: String) -> Progress {
        Progress {
            enabled,
            terminal: io::stderr().is_terminal(),
            ticks: 0,
            backend,
            project: None,
            connected: false,
            history: VecDeque::new(),
        }
    }

    /// Records the totals and prints the line when it is due.
    pub fn tick(&mut self, now: Instant, totals: &SessionStats) {
        self.history.push_back((now, totals.samples_trained));
        while self.history.front().is_some_and(|(t, _)| now.duration_since(*t) > RATE_WINDOW) {
            self.history.pop_front();
        }
        self.ticks += 1;
        if !self.enabled || (!self.terminal && !self.ticks.is_multiple_of(PLAIN_EVERY)) {
            return;
        }
        let line = self.line(totals);
        let mut err = io::stderr().lock();
        let _ = if self.terminal { write!(err, "\r\x1b[2K{line}") } else { writeln!(err, "{line}") };
        let _ = err.flush();
    }

    /// Samples per second over the last few seconds.
    pub fn samples_per_sec(&self) -> f64 {
        match (self.history.front(), self.history.back()) {
            (Some((t0, s0)), Some((t1, s1))) if t1 > t0 => (s1 - s0) as f64 / t1.duration_since(*t0).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn line(&self, totals: &SessionStats) -> String {
        let project = match (self.connected, self.project) {
            (false, _) => "connecting".to_owned(),
            (true, None) => "waiting for a project".to_owned(),
            (true, Some(p)) => format!("project {p}"),
        };
        format!(
            "daig-provider | {} | {project} | {:.0} samples/s | contributions: {} sent, {} applied, {} stale, {} refused",
            self.backend,
            self.samples_per_sec(),
            totals.contributions_sent,
            totals.applied,
            totals.stale,
            totals.refused
        )
    }

    /// Ends the line on a terminal, so that what follows starts on a new one.
    pub fn finish(&self) {
        if self.enabled && self.terminal {
            eprintln!();
        }
    }
}
