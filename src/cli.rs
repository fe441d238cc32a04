//! The command line: subcommands, their options, and the size parser.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// fbuf: zero-copy inter-process communication on Linux. Processes share a sealed memfd pool of
/// buffers; services pass 16-byte descriptors of them, never the bytes.
#[derive(Parser, Debug)]
#[command(name = "fbuf", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// The main job (also what `fbuf` with no subcommand runs): producer and consumer processes
    /// stream 64 B, 4 KiB and 1 MiB messages over an fbuf stream service and a Unix socket,
    /// verified, side by side.
    Run {
        /// Streaming time per size and transport.
        #[arg(long, default_value = "2s", value_parser = parse_duration)]
        phase: Duration,
    },
    /// Shows a live pool: size classes, participants, services and channels. Looking changes
    /// nothing: the pool is mapped read-only and the look takes no participant entry.
    Stat {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// `fbuf stat`, refreshed, with message rates per ring.
    Top {
        #[command(flatten)]
        target: Target,
        /// Time between refreshes.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        interval: Duration,
        /// Stop after this many refreshes (default: until interrupted).
        #[arg(long)]
        iterations: Option<u64>,
    },
    /// Latency and throughput, sizes x transports (fbuf, Unix socket, pipe, the spin floor),
    /// measured side by side in one run, with HDR histograms.
    Bench {
        /// Message sizes, comma-separated, with units (64,4K,64KiB,1M).
        #[arg(long, value_delimiter = ',', default_value = "64,4K,64K,1M", value_parser = parse_size)]
        sizes: Vec<u64>,
        /// Round trips measured per size and transport.
        #[arg(long, default_value_t = 5000)]
        round_trips: u64,
        /// Streaming time per size and transport.
        #[arg(long, default_value = "500ms", value_parser = parse_duration)]
        stream: Duration,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Draw the latency distribution and the message rate against size into this SVG.
        #[arg(long, value_name = "FILE.svg")]
        plot: Option<PathBuf>,
    },
    /// The seed article's copy methods (read+write, mmap+write, sendfile, splice, ...) moving
    /// one file to a socket, measured side by side.
    CopyMethods {
        /// File size, with units (64K, 256MiB, 1G).
        #[arg(default_value = "1G", value_parser = parse_size)]
        bytes: u64,
    },
    /// SIGKILL soak: participants of every kind killed at random and replaced while messages
    /// flow; afterwards nothing may be lost, duplicated or corrupt.
    Chaos {
        /// How many participants to kill.
        #[arg(long, default_value_t = 300)]
        kills: u64,
        /// How long to run.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
        secs: u64,
        /// Run the pool's owner as a process of its own and SIGKILL it halfway through; this
        /// process, a participant, then adopts the pool and admits the replacements.
        #[arg(long)]
        kill_owner: bool,
    },
    /// A participant role for the tests and benchmarks (internal).
    #[command(hide = true)]
    Peer {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Which pool to look at.
#[derive(Args, Debug, Clone)]
pub struct Target {
    /// The owner's session socket.
    #[arg(required_unless_present = "pid", conflicts_with = "pid")]
    pub socket: Option<PathBuf>,
    /// The owner's pid instead (same uid): its memfds are opened through /proc.
    #[arg(long)]
    pub pid: Option<u32>,
}

/// A size: a number with an optional binary unit: `64`, `4K`, `4KiB`, `1M`, `1MiB`, `1G`, `2GiB`
/// (K, M and G are powers of 1024; a trailing `B` is allowed). Zero and overflow are refused.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    if num.is_empty() {
        return Err(format!(
            "{s:?} is not a size: a number with an optional unit, e.g. 64, 4K, 1MiB"
        ));
    }
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (use B, K/KiB, M/MiB, G/GiB or T/TiB)"
            ));
        }
    };
    let n: u64 = num.parse().map_err(|_| {
        format!("{s:?} is not a size: a number with an optional unit, e.g. 64, 4K, 1MiB")
    })?;
    if n == 0 {
        return Err(format!("{s:?}: a size must be at least 1 byte"));
    }
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// A duration: a number with a unit `ms`, `s` or `m` (`500ms`, `2s`, `1m`); a bare number is
/// milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration: e.g. 500ms, 2s, 1m"))?;
    let d = match unit.trim() {
        "" | "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" | "min" => Duration::from_secs(n.saturating_mul(60)),
        u => return Err(format!("{s:?}: unknown unit {u:?} (use ms, s or m)")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_with_units_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("4kib"), Ok(4096));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("2 GB"), Ok(2 << 30));
        assert!(parse_size("1X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("K").unwrap_err().contains("not a size"));
        assert!(parse_size("0").unwrap_err().contains("at least 1"));
        assert!(
            parse_size("99999999999T")
                .unwrap_err()
                .contains("too large")
        );
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_duration("2h").is_err());
        assert!(parse_duration("0s").is_err());
    }
}
