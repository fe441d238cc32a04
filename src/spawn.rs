//! Starting `fbuf peer ...` processes and reading what they report: an optional `READY` line
//! first, then one `RESULT key=value ...` line on stderr.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Lines};
use std::process::{Child, ChildStderr, Command, Stdio};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A spawned peer whose stderr we read.
pub struct Running {
    child: Child,
    lines: Lines<BufReader<ChildStderr>>,
}

/// Starts `fbuf peer ARGS` with stdout discarded; with `wait_ready`, returns once it said READY.
pub fn spawn(args: &[String], wait_ready: bool) -> Result<Running> {
    spawn_with(args, Stdio::null(), Stdio::null(), wait_ready)
}

/// [`spawn`] with the given stdin and stdout (pipes between two peers).
pub fn spawn_with(
    args: &[String],
    stdin: impl Into<Stdio>,
    stdout: impl Into<Stdio>,
    wait_ready: bool,
) -> Result<Running> {
    let mut child = Command::new(std::env::current_exe()?)
        .arg("peer")
        .args(args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(child.stderr.take().ok_or("no stderr")?).lines();
    if wait_ready {
        match lines.next() {
            Some(Ok(l)) if l == "READY" => {}
            other => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("peer {args:?} did not get ready: {other:?}").into());
            }
        }
    }
    Ok(Running { child, lines })
}

/// Waits for the peer to end; returns its RESULT line's pairs.
pub fn finish(mut r: Running) -> Result<HashMap<String, String>> {
    let text: Vec<String> = r.lines.by_ref().map_while(|l| l.ok()).collect();
    let status = r.child.wait()?;
    let line = text
        .iter()
        .find_map(|l| l.strip_prefix("RESULT "))
        .ok_or_else(|| format!("peer failed ({status}): {}", text.join(" | ")))?;
    Ok(line
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect())
}
