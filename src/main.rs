//! `fbuf`: the command-line tool.
//!
//! With no arguments it runs the main job: a producer process and a consumer process on one pool
//! stream messages of 64 B, 4 KiB and 1 MiB over an fbuf stream service and, in the same run,
//! over a Unix socket; every message is verified, and the table compares the two.
//! `fbuf chaos` is the crash-recovery soak (src/chaos.rs).
//! `fbuf peer ...` runs one participant role (used by the main job, the benchmarks and the tests).

mod bench;
mod chaos;
mod cli;
mod copy_methods;
mod histo;
mod peer;
mod progress;
mod service_peers;
mod spawn;
mod stat;
mod stream;
mod uring;

use std::process::ExitCode;

use spawn::{finish, spawn};

use fbuf::PoolConfig;
use fbuf::session::{Policy, Server};

const SIZES: [usize; 3] = [64, 4096, 1 << 20];

fn main() -> ExitCode {
    use clap::Parser;
    let cli = cli::Cli::parse();
    let report = |what: &str, r: Result<bool>| match r {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("fbuf {what}: FAILED (see the table)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fbuf {what}: {e}");
            ExitCode::FAILURE
        }
    };
    match cli.cmd {
        None => report("run", main_job(2000)),
        Some(cli::Cmd::Run { phase }) => report("run", main_job(phase.as_millis() as u64)),
        Some(cli::Cmd::Peer { args }) => peer::main(&args),
        Some(cli::Cmd::Chaos {
            kills,
            secs,
            kill_owner,
        }) => report(
            "chaos",
            chaos::run(&chaos::Options {
                kills,
                secs,
                kill_owner,
            }),
        ),
        Some(cli::Cmd::CopyMethods { bytes }) => report("copy-methods", copy_methods::main(bytes)),
        Some(cli::Cmd::Stat { target, json }) => {
            report("stat", stat::stat(&target, json).map(|()| true))
        }
        Some(cli::Cmd::Top {
            target,
            interval,
            iterations,
        }) => report(
            "top",
            stat::top(&target, interval, iterations).map(|()| true),
        ),
        Some(cli::Cmd::Bench {
            sizes,
            round_trips,
            stream,
            json,
            plot,
        }) => report(
            "bench",
            bench::run(&bench::Options {
                sizes,
                round_trips,
                stream,
                json,
                plot,
            }),
        ),
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One measured run: figures from the receiver.
struct Figures {
    msgs_per_s: f64,
    gb_per_s: f64,
    p50_ns: f64,
    p99_ns: f64,
    count: u64,
    bad: u64,
}

fn figures(r: &std::collections::HashMap<String, String>) -> Figures {
    let f = |k: &str| r.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let secs = f("secs").max(1e-9);
    Figures {
        msgs_per_s: f("count") / secs,
        gb_per_s: f("bytes") / secs / 1e9,
        p50_ns: f("p50_ns"),
        p99_ns: f("p99_ns"),
        count: f("count") as u64,
        bad: f("bad") as u64,
    }
}

fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 20 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}

fn main_job(millis: u64) -> Result<bool> {
    let dir = std::env::temp_dir().join(format!("fbuf-main-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    // Each phase streams over its own stream service, created by the receiver when it starts
    // and removed when both ends have gone, so its rings serve the next phase.
    let pool = PoolConfig::builder()
        .class(64, 8192)
        .class(4096, 4096)
        .class(1 << 20, 128)
        .services(8)
        .rings(8)
        .ring_capacity(1024)
        .name("fbuf-main")
        .create()?;
    let server = Server::start(pool.clone(), dir.join("pool.sock"), Policy::default())?;
    let socket = server.path().display().to_string();
    let lat_millis = (millis / 2).max(200).to_string();
    let millis_s = millis.to_string();
    println!(
        "fbuf: producer and consumer are separate processes; {} ms of streaming and {} ms of paced \
         latency per size and transport. Messages are stamped at both ends (every {}th filled \
         whole) and verified by the receiver.",
        millis, lat_millis, 256
    );
    let bar = progress::steps(SIZES.len() as u64 * 4);
    let progress = |what: &str| {
        bar.inc(1);
        bar.set_message(what.to_string());
    };
    let mut rows = Vec::new();
    let mut all_good = true;
    for (i, &size) in SIZES.iter().enumerate() {
        let s = size.to_string();
        let run = |mode: &str, ch: usize, millis: &str| -> Result<(Figures, Figures)> {
            progress(&format!("fbuf stream service, {}, {mode}", human(size)));
            let service = format!("main/{size}/{mode}");
            let rx = spawn(
                &[
                    "svc-stream-rx".into(),
                    socket.clone(),
                    service.clone(),
                    mode.into(),
                ],
                true,
            )?;
            let tx = spawn(
                &[
                    "svc-stream-tx".into(),
                    socket.clone(),
                    service,
                    s.clone(),
                    millis.into(),
                    mode.into(),
                ],
                false,
            )?;
            finish(tx)?;
            let f = figures(&finish(rx)?);
            progress(&format!("Unix socket, {}, {mode}", human(size)));
            let path = dir.join(format!("sock-{ch}-{mode}")).display().to_string();
            let tx = spawn(
                &[
                    "sock-tx".into(),
                    path.clone(),
                    s.clone(),
                    millis.into(),
                    mode.into(),
                ],
                true,
            )?;
            let rx = spawn(&["sock-rx".into(), path, s.clone(), mode.into()], false)?;
            let u = figures(&finish(rx)?);
            finish(tx)?;
            Ok((f, u))
        };
        let (f_tput, u_tput) = run("tput", 2 * i, &millis_s)?;
        let (f_lat, u_lat) = run("lat", 2 * i + 1, &lat_millis)?;
        all_good &= [&f_tput, &u_tput, &f_lat, &u_lat]
            .iter()
            .all(|f| f.bad == 0 && f.count > 0);
        rows.push((size, f_tput, u_tput, f_lat, u_lat));
    }
    bar.finish_and_clear();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);

    println!();
    println!(
        "{:<7} {:<11} {:>12} {:>9} {:>14} {:>10} {:>10} {:>10}",
        "size", "transport", "msgs/s", "GB/s", "copied/msg", "p50 (µs)", "p99 (µs)", "verified"
    );
    for (size, f, u, fl, ul) in &rows {
        let line = |name: &str, t: &Figures, l: &Figures, copied: String| {
            println!(
                "{:<7} {:<11} {:>12.0} {:>9.3} {:>14} {:>10.2} {:>10.2} {:>10}",
                human(*size),
                name,
                t.msgs_per_s,
                t.gb_per_s,
                copied,
                l.p50_ns / 1e3,
                l.p99_ns / 1e3,
                if t.bad + l.bad == 0 {
                    format!("{} ok", t.count + l.count)
                } else {
                    format!("{} BAD", t.bad + l.bad)
                }
            );
        };
        line("fbuf", f, fl, "0 B".into());
        line("unix sock", u, ul, human(2 * size));
        println!(
            "{:<7} {:<11} {:>11.1}x {:>8.1}x {:>14} {:>9.2}x {:>9.2}x",
            "",
            "ratio",
            f.msgs_per_s / u.msgs_per_s.max(1e-9),
            f.gb_per_s / u.gb_per_s.max(1e-12),
            "",
            ul.p50_ns / fl.p50_ns.max(1.0),
            ul.p99_ns / fl.p99_ns.max(1.0),
        );
    }
    println!();
    println!(
        "copied/msg: payload bytes the transport copies per message (fbuf moves a 16-byte descriptor;"
    );
    println!(
        "a Unix socket copies user->kernel->user). Latency: one message every 20 µs, send stamp to receipt,"
    );
    println!(
        "fbuf receiver busy-spinning, socket receiver blocking in read. Ratios > 1 favour fbuf."
    );
    println!(
        "verification: {}",
        if all_good {
            "every message's stamps and every sampled payload matched"
        } else {
            "FAILED"
        }
    );
    Ok(all_good)
}
