//! `fbuf stat` and `fbuf top`: a live pool, looked at from outside through read-only mappings
//! (`fbuf::inspect`), as tables or JSON.

use std::time::{Duration, Instant};

use fbuf::inspect::{Inspection, PoolStat};
use fbuf::service::RingStats;
use serde_json::{Value, json};

use crate::cli::Target;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Opens the pool named by `target` for inspection.
pub fn open(target: &Target) -> Res<Inspection> {
    Ok(match (&target.socket, target.pid) {
        (_, Some(pid)) => Inspection::of_process(pid)?,
        (Some(path), None) => fbuf::session::inspect(path)?,
        (None, None) => return Err("a socket or --pid is needed".into()),
    })
}

pub fn stat(target: &Target, as_json: bool) -> Res<()> {
    let s = open(target)?.stat();
    if as_json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s))?);
    } else {
        print!("{}", tables(&s, None));
    }
    Ok(())
}

pub fn top(target: &Target, interval: Duration, iterations: Option<u64>) -> Res<()> {
    use std::io::IsTerminal;
    let inspection = open(target)?;
    let mut before = (Instant::now(), inspection.stat());
    let mut n = 0;
    loop {
        std::thread::sleep(interval);
        let now = (Instant::now(), inspection.stat());
        let secs = (now.0 - before.0).as_secs_f64().max(1e-9);
        let rates = Rates {
            before: &before.1,
            secs,
        };
        if std::io::stdout().is_terminal() {
            print!("\x1b[2J\x1b[H"); // clear the screen, cursor home
        }
        println!(
            "fbuf top: every {:.1} s, refresh {} (rates over the last {:.2} s)\n",
            interval.as_secs_f64(),
            n + 1,
            secs
        );
        print!("{}", tables(&now.1, Some(&rates)));
        before = now;
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
    }
}

/// The previous look, to turn ring positions into message rates.
struct Rates<'a> {
    before: &'a PoolStat,
    secs: f64,
}

impl Rates<'_> {
    fn service(&self, name: &str, k: usize, now: &RingStats) -> f64 {
        let old = self
            .before
            .services
            .iter()
            .find(|s| s.name == name)
            .and_then(|s| s.rings.get(k));
        old.map_or(0.0, |o| {
            now.pushed.wrapping_sub(o.pushed) as f64 / self.secs
        })
    }

    fn channel(&self, index: usize, k: usize, now: &RingStats) -> f64 {
        let old = self.before.channels.get(index).and_then(|c| c.rings.get(k));
        old.map_or(0.0, |o| {
            now.pushed.wrapping_sub(o.pushed) as f64 / self.secs
        })
    }
}

fn tables(s: &PoolStat, rates: Option<&Rates<'_>>) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "size classes");
    let _ = writeln!(
        o,
        "  {:>10} {:>8} {:>8} {:>8} {:>10}",
        "slot size", "slots", "free", "held", "in flight"
    );
    for c in &s.classes {
        let _ = writeln!(
            o,
            "  {:>10} {:>8} {:>8} {:>8} {:>10}",
            human(c.slot_size),
            c.slots,
            c.free,
            c.held,
            c.in_flight
        );
    }
    let _ = writeln!(o, "\nparticipants");
    let _ = writeln!(
        o,
        "  {:>4} {:>8} {:>6} {:<9} {:<6} {:>9}",
        "id", "pid", "uid", "role", "alive", "holdings"
    );
    for p in &s.participants {
        let _ = writeln!(
            o,
            "  {:>4} {:>8} {:>6} {:<9} {:<6} {:>9}",
            p.id,
            p.pid,
            p.uid.map_or("?".into(), |u| u.to_string()),
            p.role
                .map_or("?".into(), |r| format!("{r:?}").to_lowercase()),
            if p.alive { "yes" } else { "DEAD" },
            p.holdings
        );
    }
    for (id, by) in &s.recoveries {
        let _ = writeln!(o, "  {id:>4} departed, being recovered by participant {by}");
    }
    let _ = writeln!(
        o,
        "\nservices ({} free entries, {} free rings)",
        s.free_service_entries, s.free_service_rings
    );
    let rate_head = if rates.is_some() { "   msgs/s" } else { "" };
    let _ = writeln!(
        o,
        "  {:<24} {:<18} {:>5} {:>4} {:>9} {:>8} {:>8} {:>9} {:>6}{rate_head}",
        "name", "kind", "users", "ring", "depth", "receiver", "senders", "sleepers", "lost"
    );
    for svc in &s.services {
        for (k, r) in svc.rings.iter().enumerate() {
            let (name, kind, users) = if k == 0 {
                (svc.name.as_str(), svc.kind.name(), svc.users.to_string())
            } else {
                ("", "", String::new())
            };
            let rate = rates.map_or(String::new(), |x| {
                format!(" {:>9.0}", x.service(&svc.name, k, r))
            });
            let _ = writeln!(o, "  {name:<24} {kind:<18} {users:>5} {}{rate}", ring(k, r));
        }
    }
    if !s.channels.is_empty() {
        let _ = writeln!(o, "\nfixed channels");
        for c in &s.channels {
            for (k, r) in c.rings.iter().enumerate() {
                let rate = rates.map_or(String::new(), |x| {
                    format!(" {:>9.0}", x.channel(c.index, k, r))
                });
                let _ = writeln!(
                    o,
                    "  {:<24} {:<18} {:>5} {}{rate}",
                    format!("#{}", c.index),
                    c.kind,
                    "",
                    ring(k, r)
                );
            }
        }
    }
    o
}

fn ring(k: usize, r: &RingStats) -> String {
    format!(
        "{k:>4} {:>9} {:>8} {:>8} {:>9} {:>6}",
        format!("{}/{}", r.queued, r.capacity),
        if r.receiver { "yes" } else { "-" },
        r.senders,
        r.sleepers,
        r.lost
    )
}

fn ring_json(r: &RingStats) -> Value {
    json!({
        "capacity": r.capacity,
        "queued": r.queued,
        "pushed": r.pushed,
        "receiver": r.receiver,
        "senders": r.senders,
        "sleepers": r.sleepers,
        "lost": r.lost,
    })
}

pub fn to_json(s: &PoolStat) -> Value {
    json!({
        "classes": s.classes.iter().map(|c| json!({
            "slot_size": c.slot_size,
            "slots": c.slots,
            "free": c.free,
            "held": c.held,
            "in_flight": c.in_flight,
        })).collect::<Vec<_>>(),
        "participants": s.participants.iter().map(|p| json!({
            "id": p.id,
            "pid": p.pid,
            "uid": p.uid,
            "role": p.role.map(|r| format!("{r:?}").to_lowercase()),
            "alive": p.alive,
            "holdings": p.holdings,
        })).collect::<Vec<_>>(),
        "recoveries": s.recoveries.iter().map(|(id, by)| json!({
            "id": id,
            "recoverer": by,
        })).collect::<Vec<_>>(),
        "services": s.services.iter().map(|v| json!({
            "name": v.name,
            "kind": v.kind.name(),
            "users": v.users,
            "capacity": v.capacity,
            "payload_size": v.payload_size,
            "rings": v.rings.iter().map(ring_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "channels": s.channels.iter().map(|c| json!({
            "index": c.index,
            "kind": c.kind,
            "rings": c.rings.iter().map(ring_json).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "free_service_entries": s.free_service_entries,
        "free_service_rings": s.free_service_rings,
    })
}

pub fn human(size: usize) -> String {
    match size {
        s if s >= 1 << 30 && s % (1 << 30) == 0 => format!("{} GiB", s >> 30),
        s if s >= 1 << 20 && s % (1 << 20) == 0 => format!("{} MiB", s >> 20),
        s if s >= 1 << 10 && s % (1 << 10) == 0 => format!("{} KiB", s >> 10),
        s => format!("{s} B"),
    }
}
