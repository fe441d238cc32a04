//! `fbuf bench`: latency and throughput, sizes x transports, side by side in one run.
//!
//! Transports: an fbuf stream service, a Unix stream socket, a pipe; and the floor, two
//! processes handing one shared cache line back and forth. Every end is its own process
//! (`fbuf peer ...`). Latency is half a ping-pong round trip, recorded in an HDR histogram by the
//! pinger (p50, p99, p99.9, max, and the distribution for the plot); throughput is messages per
//! second streamed for a fixed time, every message's stamps verified by the receiver.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::spawn::{Running, finish, spawn, spawn_with};
use crate::stat::human;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

pub struct Options {
    pub sizes: Vec<u64>,
    pub round_trips: u64,
    pub stream: Duration,
    pub json: bool,
    pub plot: Option<PathBuf>,
}

/// One latency distribution, in nanoseconds one way.
#[derive(Clone, Debug, Default)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
    max: f64,
    /// (quantile, ns) points.
    cdf: Vec<(f64, f64)>,
}

impl Latency {
    fn from(r: &HashMap<String, String>) -> Latency {
        let f = |k: &str| r.get(k).and_then(|v| v.parse().ok()).unwrap_or(0.0);
        let cdf = r
            .get("cdf")
            .map(|c| {
                c.split(';')
                    .filter_map(|p| p.split_once(':'))
                    .filter_map(|(q, v)| Some((q.parse().ok()?, v.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        Latency {
            p50: f("p50_ns"),
            p99: f("p99_ns"),
            p999: f("p999_ns"),
            max: f("max_ns"),
            cdf,
        }
    }

    fn json(&self) -> Value {
        json!({
            "p50": self.p50, "p99": self.p99, "p999": self.p999, "max": self.max,
            "cdf": self.cdf.iter().map(|(q, v)| json!([q, v])).collect::<Vec<_>>(),
        })
    }
}

/// One transport at one size.
#[derive(Clone, Debug)]
struct Cell {
    size: u64,
    transport: &'static str,
    latency: Latency,
    msgs_per_s: f64,
    verified: bool,
}

const TRANSPORTS: [&str; 3] = ["fbuf", "unix socket", "pipe"];

pub fn run(o: &Options) -> Res<bool> {
    let dir = std::env::temp_dir().join(format!("fbuf-cli-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let r = measure(o, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    let (floor, cells) = r?;
    if let Some(path) = &o.plot {
        plot(path, &floor, &cells)?;
    }
    if o.json {
        let out = json!({
            "floor": floor.json(),
            "results": cells.iter().map(|c| json!({
                "size": c.size,
                "transport": c.transport,
                "latency_ns": c.latency.json(),
                "msgs_per_s": c.msgs_per_s,
                "verified": c.verified,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_tables(&floor, &cells);
    }
    Ok(cells.iter().all(|c| c.verified))
}

fn s(v: impl ToString) -> String {
    v.to_string()
}

fn measure(o: &Options, dir: &std::path::Path) -> Res<(Latency, Vec<Cell>)> {
    let bar = crate::progress::steps(1 + o.sizes.len() as u64 * 6);
    let rt = o.round_trips.to_string();
    let ms = o.stream.as_millis().max(1).to_string();

    bar.set_message("spin floor");
    let spin = dir.join("spin");
    std::fs::write(&spin, vec![0u8; 4096])?;
    let spin = spin.display().to_string();
    let pong = spawn(&[s("pp-spin"), s("pong"), spin.clone(), rt.clone()], true)?;
    let floor = Latency::from(&finish(spawn(
        &[s("pp-spin"), s("ping"), spin, rt.clone()],
        false,
    )?)?);
    finish(pong)?;
    bar.inc(1);

    // One class per size asked for. Streaming gets about 64 MiB of slots per class (64 to 8192
    // of them); ping-pong a pool of its own with 64 slots per class, reused round after round as
    // in a steady state (thousands of fresh slots would measure first-touch page faults).
    let mut slot_sizes: Vec<u32> = o
        .sizes
        .iter()
        .map(|&n| n.next_power_of_two().clamp(64, 1 << 30) as u32)
        .collect();
    slot_sizes.sort_unstable();
    slot_sizes.dedup();
    let serve = |name: &str, count: &dyn Fn(u32) -> u32| -> Res<(fbuf::session::Server, String)> {
        let pool = slot_sizes
            .iter()
            .fold(fbuf::PoolConfig::builder(), |b, &size| {
                b.class(size, count(size))
            })
            .services(4)
            .rings(4)
            .ring_capacity(1024)
            .name(name)
            .create()?;
        let sock = dir.join(format!("{name}.sock"));
        let server = fbuf::session::Server::start(pool, &sock, Default::default())?;
        Ok((server, sock.display().to_string()))
    };
    let (_stream_server, sock) = serve("fbuf-cli-bench", &|size| {
        ((64 << 20) / size).clamp(64, 8192)
    })?;
    let (_pp_server, pp_sock) = serve("fbuf-cli-bench-pp", &|_| 64)?;

    let mut cells = Vec::new();
    for (i, &size) in o.sizes.iter().enumerate() {
        let sz = size.to_string();
        let mut lat = Vec::new();
        bar.set_message(format!("{} ping-pong, fbuf", human(size as usize)));
        let pong = spawn(&[s("svc-pp-pong"), pp_sock.clone()], true)?;
        let ping = spawn(
            &[s("svc-pp-ping"), pp_sock.clone(), sz.clone(), rt.clone()],
            true,
        )?;
        lat.push(Latency::from(&finish(ping)?));
        finish(pong)?;
        bar.inc(1);
        bar.set_message(format!("{} ping-pong, unix socket", human(size as usize)));
        let path = dir.join(format!("pp-{i}")).display().to_string();
        let ping = spawn(
            &[s("pp-io-ping"), sz.clone(), rt.clone(), path.clone()],
            true,
        )?;
        let pong = spawn(&[s("pp-io-pong"), sz.clone(), path], false)?;
        lat.push(Latency::from(&finish(ping)?));
        finish(pong)?;
        bar.inc(1);
        bar.set_message(format!("{} ping-pong, pipe", human(size as usize)));
        let (a_r, a_w) = std::io::pipe()?;
        let (b_r, b_w) = std::io::pipe()?;
        let ping = spawn_with(&[s("pp-io-ping"), sz.clone(), rt.clone()], b_r, a_w, false)?;
        let pong = spawn_with(&[s("pp-io-pong"), sz.clone()], a_r, b_w, false)?;
        lat.push(Latency::from(&finish(ping)?));
        finish(pong)?;
        bar.inc(1);

        let mut rates = Vec::new();
        bar.set_message(format!("{} streaming, fbuf", human(size as usize)));
        let name = format!("bench/{i}");
        let rx = spawn(
            &[s("svc-stream-rx"), sock.clone(), name.clone(), s("tput")],
            true,
        )?;
        let tx = spawn(
            &[
                s("svc-stream-tx"),
                sock.clone(),
                name,
                sz.clone(),
                ms.clone(),
                s("tput"),
            ],
            false,
        )?;
        finish(tx)?;
        rates.push(finish(rx)?);
        bar.inc(1);
        bar.set_message(format!("{} streaming, unix socket", human(size as usize)));
        let path = dir.join(format!("s-{i}")).display().to_string();
        let tx = spawn(
            &[
                s("sock-tx"),
                path.clone(),
                sz.clone(),
                ms.clone(),
                s("tput"),
            ],
            true,
        )?;
        let rx = spawn(&[s("sock-rx"), path, sz.clone(), s("tput")], false)?;
        rates.push(finish(rx)?);
        finish(tx)?;
        bar.inc(1);
        bar.set_message(format!("{} streaming, pipe", human(size as usize)));
        let (r, w) = std::io::pipe()?;
        let tx: Running = spawn_with(
            &[s("pipe-tx"), sz.clone(), ms.clone(), s("tput")],
            std::process::Stdio::null(),
            w,
            false,
        )?;
        let rx = spawn_with(
            &[s("pipe-rx"), sz.clone(), s("tput")],
            r,
            std::process::Stdio::null(),
            false,
        )?;
        rates.push(finish(rx)?);
        finish(tx)?;
        bar.inc(1);

        for ((transport, latency), rate) in TRANSPORTS.into_iter().zip(lat).zip(rates) {
            let f = |k: &str| {
                rate.get(k)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0)
            };
            cells.push(Cell {
                size,
                transport,
                latency,
                msgs_per_s: f("count") / f("secs").max(1e-9),
                verified: f("bad") == 0.0 && f("count") > 0.0,
            });
        }
    }
    bar.finish_and_clear();
    Ok((floor, cells))
}

fn print_tables(floor: &Latency, cells: &[Cell]) {
    println!(
        "spin floor (one cache line between two processes), one way: p50 {:.0} ns, p99 {:.0} ns\n",
        floor.p50, floor.p99
    );
    println!("one-way latency, ns (half a ping-pong round trip)");
    println!(
        "  {:<8} {:<12} {:>9} {:>9} {:>9} {:>10} {:>12}",
        "size", "transport", "p50", "p99", "p99.9", "max", "p50 / floor"
    );
    for c in cells {
        println!(
            "  {:<8} {:<12} {:>9.0} {:>9.0} {:>9.0} {:>10.0} {:>11.1}x",
            human(c.size as usize),
            c.transport,
            c.latency.p50,
            c.latency.p99,
            c.latency.p999,
            c.latency.max,
            c.latency.p50 / floor.p50.max(1.0)
        );
    }
    println!("\nstreaming, messages per second (every message's stamps verified)");
    println!(
        "  {:<8} {:<12} {:>12} {:>12} {:>9}",
        "size", "transport", "msgs/s", "fbuf / this", "verified"
    );
    for c in cells {
        let fbuf = cells
            .iter()
            .find(|x| x.size == c.size && x.transport == "fbuf")
            .map_or(0.0, |x| x.msgs_per_s);
        println!(
            "  {:<8} {:<12} {:>12.0} {:>11.1}x {:>9}",
            human(c.size as usize),
            c.transport,
            c.msgs_per_s,
            fbuf / c.msgs_per_s.max(1e-9),
            if c.verified { "ok" } else { "BAD" }
        );
    }
}

/// Two charts in one SVG: the latency distribution at the smallest size (one line per
/// transport and the floor, against the quantile on a "nines" scale), and the message rate
/// against the message size (log-log).
fn plot(path: &std::path::Path, floor: &Latency, cells: &[Cell]) -> Res<()> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1100, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(550);
    let colors = [RED, BLUE, GREEN, BLACK];
    // "Nines": 0 at p0, 1 at p90, 2 at p99, 3 at p99.9 ...
    let nines = |q: f64| -(1.0 - q.min(0.99999)).log10();
    let smallest = cells.iter().map(|c| c.size).min().unwrap_or(64);
    let mut series: Vec<(String, Vec<(f64, f64)>)> = cells
        .iter()
        .filter(|c| c.size == smallest)
        .map(|c| (c.transport.to_string(), c.latency.cdf.clone()))
        .collect();
    series.push(("spin floor".into(), floor.cdf.clone()));
    let max_ns = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(_, v)| *v))
        .fold(10.0, f64::max);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            format!("one-way latency, {}", human(smallest as usize)),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..5f64, (10f64..max_ns * 1.5).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("percentile (0 = p0, 1 = p90, 2 = p99, 3 = p99.9, ...)")
        .y_desc("ns")
        .draw()?;
    for (k, (name, points)) in series.iter().enumerate() {
        let color = colors[k % colors.len()];
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|&(q, v)| (nines(q), v.max(10.0))),
                color.stroke_width(2),
            ))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;

    let sizes: Vec<u64> = {
        let mut v: Vec<u64> = cells.iter().map(|c| c.size).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let max_rate = cells.iter().map(|c| c.msgs_per_s).fold(10.0, f64::max);
    let min_size = *sizes.first().unwrap_or(&64) as f64;
    let max_size = (*sizes.last().unwrap_or(&64) as f64).max(min_size * 2.0);
    let mut chart = ChartBuilder::on(&right)
        .caption("message rate against size", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(
            (min_size / 1.5..max_size * 1.5).log_scale(),
            (1f64..max_rate * 2.0).log_scale(),
        )?;
    chart
        .configure_mesh()
        .x_desc("message size, bytes")
        .y_desc("messages / s")
        .draw()?;
    for (k, t) in TRANSPORTS.iter().enumerate() {
        let color = colors[k % colors.len()];
        let points: Vec<(f64, f64)> = cells
            .iter()
            .filter(|c| c.transport == *t)
            .map(|c| (c.size as f64, c.msgs_per_s.max(1.0)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(*t)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 3, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    root.present()?;
    Ok(())
}
