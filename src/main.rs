//! `fbuf`: the command-line tool. With no arguments it runs the main demonstration: a producer
//! process and a consumer process on one pool, buffers of several sizes, every byte verified.
//! `fbuf peer ...` runs one participant role (used by the demo and the cross-process tests).

mod peer;

use std::process::{Command, Stdio};
use std::time::Instant;

use fbuf::session::{Policy, Server};
use fbuf::{Pool, PoolConfig};

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("peer") {
        return peer::main(&args[1..]);
    }
    if let Err(e) = demo(args.first().cloned()) {
        eprintln!("fbuf: {e}");
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}

fn result_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or("(no result)")
        .to_string()
}

fn demo(count: Option<String>) -> Result<(), Box<dyn std::error::Error>> {
    let count = count.unwrap_or_else(|| "20000".into());
    let me = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("fbuf-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let pool = Pool::create(&PoolConfig::default())?;
    let server = Server::start(pool.clone(), dir.join("pool.sock"), Policy::default())?;
    let socket = server.path().display().to_string();
    println!(
        "fbuf demo: pool of {} slots in {} classes; producer and consumer are separate processes",
        pool.slot_count(),
        pool.classes().len()
    );
    println!(
        "descriptors travel over a pipe (rings arrive with the channels work); bytes stay in the pool"
    );
    let start = Instant::now();
    let mut producer = Command::new(&me)
        .args(["peer", "produce", &socket, &count, "7"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let consumer = Command::new(&me)
        .args(["peer", "consume", &socket, &count, "7"])
        .stdin(producer.stdout.take().ok_or("no producer stdout")?)
        .stderr(Stdio::piped())
        .spawn()?;
    let (p, c) = (producer.wait_with_output()?, consumer.wait_with_output()?);
    let secs = start.elapsed().as_secs_f64();
    let (p, c) = (result_line(&p.stderr), result_line(&c.stderr));
    println!("producer: {p}");
    println!("consumer: {c}");
    let bytes: f64 = p
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("bytes="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let n: f64 = count.parse().unwrap_or(0.0);
    println!(
        "{n} buffers, {:.1} MB in {secs:.2} s: {:.0} buffers/s, {:.2} GB/s written once and read in place",
        bytes / 1e6,
        n / secs,
        bytes / secs / 1e9
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    let verified =
        c.contains("bad=0") && p.split_whitespace().last() == c.split_whitespace().last();
    if !verified {
        return Err("verification failed: checksums differ or bad buffers".into());
    }
    println!("verified: every byte matched, checksums equal");
    Ok(())
}
