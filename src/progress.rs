//! Progress bars for runs longer than a second (`indicatif`): drawn on stderr when it is a
//! terminal, silent otherwise (CI logs, tests, pipes).

use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps, the current step named in its message.
pub fn steps(len: u64) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}

/// A bar over `secs` seconds of a timed run, with a counter in its message.
pub fn seconds(secs: u64) -> ProgressBar {
    let bar = ProgressBar::new(secs);
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:32}] {pos}/{len} s {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar
}
