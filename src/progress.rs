//! Progress of a long loop: a bar on standard error when it is a terminal, otherwise a plain
//! line on standard output at most every [`LINE_EVERY`] (and one at the end), so the logs of
//! batch jobs stay readable.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Shortest interval between two plain progress lines.
pub const LINE_EVERY: Duration = Duration::from_secs(10);

pub struct Progress {
    bar: Option<ProgressBar>,
    total: u64,
    last_line: Instant,
}

impl Progress {
    /// `prefix` leads every bar and line ("Epoch 3/10", "sampling"); counting starts at `start`.
    pub fn new(prefix: &str, total: u64, start: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let style = ProgressStyle::with_template(
                "{prefix} [{wide_bar}] {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
            )
            .expect("a valid template")
            .progress_chars("=> ");
            let bar = ProgressBar::new(total).with_style(style).with_prefix(prefix.to_string());
            bar.set_position(start);
            bar
        });
        Self { bar, total, last_line: Instant::now() }
    }

    /// Moves to `done`; `line` gives the text of a plain line (or the bar's message).
    pub fn set(&mut self, done: u64, line: impl FnOnce() -> String) {
        match &self.bar {
            Some(bar) => {
                bar.set_position(done);
                bar.set_message(line());
            }
            None if done == self.total || self.last_line.elapsed() >= LINE_EVERY => {
                println!("{}", line());
                self.last_line = Instant::now();
            }
            None => {}
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
