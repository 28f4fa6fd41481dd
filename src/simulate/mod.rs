//! `parkade simulate`: campus traffic for a running server, and a load generator.
//!
//! Traffic mode (the default) follows a daily curve per lot: on weekdays the lots fill
//! from about 7:30 with a peak between 10:00 and 14:00, drain from 15:00, with a small
//! evening bump for night classes; weekends stay low. The campus's year scales it
//! ([`term`]): classes, exams, breaks between terms, the reading break and statutory
//! holidays (quiet as a weekend). Each simulated lot moves toward
//! its curve with arrivals and departures drawn at random (plus turnover), in simulated
//! time running `speed` times faster than the clock. Load mode (`--rate R`) sends R
//! events a second, arrivals and departures alternating, and reports the achieved rate
//! and latency percentiles.

use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Datelike, Timelike, Utc};

use crate::api::wire;

pub mod term;

/// A lot the simulator drives.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct SimLot {
    pub lot_id: String,
    pub name: String,
    pub capacity: u32,
    /// Share of the capacity taken at the weekday peak.
    #[serde(default = "default_peak")]
    pub peak: f64,
}

fn default_peak() -> f64 {
    0.9
}

/// Simon Fraser University, Burnaby campus: lots and plausible capacities (round
/// figures for the demo, not the university's official counts).
pub fn sfu_burnaby() -> Vec<SimLot> {
    [
        ("west-mall-parkade", "West Mall Parkade", 900, 0.95),
        ("south-parkade", "South Parkade", 650, 0.9),
        ("north-lot", "North Lot", 420, 0.85),
        ("east-lot", "East Lot", 300, 0.8),
        ("residence-lot", "Residence Lot", 240, 0.7),
        ("visitor-lot", "Visitor Lot (Convocation Mall)", 120, 0.75),
        ("discovery-park", "Discovery Park", 180, 0.6),
    ]
    .into_iter()
    .map(|(id, name, capacity, peak)| SimLot {
        lot_id: id.into(),
        name: name.into(),
        capacity,
        peak,
    })
    .collect()
}

/// Read lots from a JSON file: `[{"lot_id", "name", "capacity", "peak"?}, ...]`.
pub fn lots_from_file(path: &std::path::Path) -> anyhow::Result<Vec<SimLot>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    let lots: Vec<SimLot> = serde_json::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: expected [{{\"lot_id\", \"name\", \"capacity\", \"peak\"?}}, ...]: {e}",
            path.display()
        )
    })?;
    if lots.is_empty() {
        anyhow::bail!("{} lists no lots", path.display());
    }
    // The same rules as the server's, so a bad file is named here, not in 400s later.
    for l in &lots {
        crate::domain::LotId::parse(&l.lot_id)
            .map_err(|e| anyhow::anyhow!("{}: lot {:?}: {e}", path.display(), l.lot_id))?;
        crate::domain::LotName::parse(&l.name)
            .map_err(|e| anyhow::anyhow!("{}: lot {:?}: {e}", path.display(), l.lot_id))?;
        crate::domain::Capacity::new(i64::from(l.capacity))
            .map_err(|e| anyhow::anyhow!("{}: lot {:?}: {e}", path.display(), l.lot_id))?;
    }
    Ok(lots)
}

/// The share of the lot's peak occupied at local hour `h` (fractional) of a weekday or
/// a weekend day.
pub fn curve(h: f64, weekend: bool) -> f64 {
    let bump = |centre: f64, width: f64| (-((h - centre) / width).powi(2)).exp();
    if weekend {
        0.25 * bump(13.0, 3.5)
    } else {
        // Morning fill, midday plateau, afternoon drain, evening classes.
        let day = 1.0 / (1.0 + (-(h - 8.6) * 2.2).exp()) * (1.0 / (1.0 + ((h - 16.2) * 1.3).exp()));
        (0.97 * day + 0.25 * bump(19.0, 1.2)).min(1.0)
    }
}

/// The share of the lot's peak occupied at local hour `h` of `day`: the weekday or
/// weekend curve, the weekday's scaled by the campus's year (a holiday is a weekend).
pub fn day_curve(day: chrono::NaiveDate, h: f64) -> f64 {
    let weekend = day.weekday().num_days_from_monday() >= 5;
    match term::Term::of(day).weekday_scale(day) {
        Some(scale) if !weekend => curve(h, false) * scale,
        _ => curve(h, true),
    }
}

/// A small deterministic random source (SplitMix64).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A Poisson draw (Knuth's method; the means here are small).
    fn poisson(&mut self, mean: f64) -> u32 {
        if mean <= 0.0 {
            return 0;
        }
        if mean > 30.0 {
            // Normal approximation for large means.
            let u = self.next().max(1e-12);
            let v = self.next();
            let n = (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos();
            return (mean + n * mean.sqrt()).round().max(0.0) as u32;
        }
        let limit = (-mean).exp();
        let (mut k, mut p) = (0, 1.0);
        loop {
            p *= self.next();
            if p <= limit {
                return k;
            }
            k += 1;
        }
    }
}

/// Settings of a simulation run.
#[derive(Debug, Clone)]
pub struct Settings {
    pub url: String,
    pub lots: Vec<SimLot>,
    /// Simulated seconds per real second (traffic mode).
    pub speed: f64,
    /// Events per second (load mode); `None` for traffic mode.
    pub rate: Option<f64>,
    /// Events per request (1: one event per request, as the old simulator did).
    pub batch: NonZeroUsize,
    /// Concurrent connections.
    pub connections: NonZeroUsize,
    /// Stop after this many real seconds (`None`: until Ctrl-C).
    pub duration: Option<Duration>,
    /// Where simulated time starts.
    pub start: DateTime<Utc>,
    /// Local time of the campus, for the daily curve.
    pub timezone: chrono_tz::Tz,
    pub seed: u64,
    /// Bearer token for a server with access control (admin: the simulator registers
    /// its lots).
    pub token: Option<String>,
    /// Print a progress line every this often.
    pub report_every: Duration,
}

/// Totals of a run.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Summary {
    pub requests: u64,
    pub events: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub errors: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    pub latency_ms_p50: f64,
    pub latency_ms_p90: f64,
    pub latency_ms_p99: f64,
    pub latency_ms_max: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} events in {} requests over {:.1} s: {:.0} events/s; {} accepted, {} rejected, {} failed; latency per request p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            self.events,
            self.requests,
            self.seconds,
            self.events_per_second,
            self.accepted,
            self.rejected,
            self.errors,
            self.latency_ms_p50,
            self.latency_ms_p90,
            self.latency_ms_p99,
            self.latency_ms_max
        )
    }
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    events: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    /// Count one request of `n` events and what the server answered (`None`: no answer).
    fn count(&self, n: usize, reply: Option<Reply>) {
        let n = n as u64;
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.events.fetch_add(n, Ordering::Relaxed);
        let (accepted, rejected, errors) = match reply {
            Some(Reply::Batch(b)) => (
                (b.accepted + b.duplicates) as u64,
                b.rejected as u64,
                b.errors as u64,
            ),
            Some(Reply::Acked) => (n, 0, 0),
            Some(Reply::Refused) => (0, n, 0),
            Some(Reply::Failed) | None => (0, 0, n),
        };
        self.accepted.fetch_add(accepted, Ordering::Relaxed);
        self.rejected.fetch_add(rejected, Ordering::Relaxed);
        self.errors.fetch_add(errors, Ordering::Relaxed);
    }

    fn summary(&self, seconds: f64, mut latencies: Vec<u32>) -> Summary {
        latencies.sort_unstable();
        let events = self.events.load(Ordering::Relaxed);
        Summary {
            requests: self.requests.load(Ordering::Relaxed),
            events,
            accepted: self.accepted.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            seconds,
            events_per_second: events as f64 / seconds.max(1e-9),
            latency_ms_p50: percentile(&latencies, 0.5),
            latency_ms_p90: percentile(&latencies, 0.9),
            latency_ms_p99: percentile(&latencies, 0.99),
            latency_ms_max: latencies.last().map_or(0.0, |v| f64::from(*v) / 1000.0),
        }
    }
}

/// What the server made of one request.
enum Reply {
    /// A batch's outcomes.
    Batch(wire::BatchReply),
    /// One event, acknowledged (accepted or a duplicate).
    Acked,
    /// One event or a whole batch refused (400, 404, 409).
    Refused,
    /// Anything else: not acknowledged.
    Failed,
}

/// Register the lots that the server does not know yet, as of `at` (default: now).
pub async fn register(
    client: &awc::Client,
    url: &str,
    lots: &[SimLot],
    at: Option<DateTime<Utc>>,
) -> anyhow::Result<()> {
    for l in lots {
        let body = wire::RegisterIn {
            lot_id: l.lot_id.clone(),
            name: l.name.clone(),
            capacity: l.capacity,
            stamp: wire::Stamp {
                event_id: None,
                timestamp: at.map(|t| t.to_rfc3339().into()),
            },
        };
        let mut resp = client
            .post(format!("{url}/v1/lots"))
            .send_json(&body)
            .await
            .map_err(|e| anyhow::anyhow!("POST {url}/v1/lots: {e} (is the server running?)"))?;
        let status = resp.status().as_u16();
        if ![200, 201, 409].contains(&status) {
            let body = resp.body().await.unwrap_or_default();
            anyhow::bail!(
                "registering {}: the server answered {status}: {}",
                l.lot_id,
                String::from_utf8_lossy(&body)
            );
        }
    }
    Ok(())
}

/// The occupancy the server holds now for each lot.
async fn current_occupancy(
    client: &awc::Client,
    url: &str,
    lots: &[SimLot],
) -> anyhow::Result<Vec<u32>> {
    let mut occupancy = Vec::with_capacity(lots.len());
    for l in lots {
        let path = format!("/v1/lots/{}", l.lot_id);
        let mut resp = client
            .get(format!("{url}{path}"))
            .send()
            .await
            .map_err(|e| anyhow::anyhow!("GET {path}: {e}"))?;
        let lot: wire::Lot = resp.json().await.map_err(|e| {
            anyhow::anyhow!("GET {path}: the server answered {}: {e}", resp.status())
        })?;
        occupancy.push(lot.occupancy);
    }
    Ok(occupancy)
}

fn event(lot: &SimLot, kind: &str, timestamp: Option<&str>) -> wire::EventIn {
    wire::EventIn {
        lot_id: lot.lot_id.clone(),
        event_type: kind.into(),
        stamp: wire::Stamp {
            event_id: None,
            timestamp: timestamp.map(|t| t.into()),
        },
        count: None,
    }
}

/// The events of one step of simulated time, per lot, moving toward the curve.
fn traffic_step(
    lots: &[SimLot],
    occupancy: &mut [u32],
    at: DateTime<Utc>,
    step_secs: f64,
    tz: chrono_tz::Tz,
    rng: &mut Rng,
) -> Vec<wire::EventIn> {
    let local = at.with_timezone(&tz);
    let hour = f64::from(local.hour()) + f64::from(local.minute()) / 60.0;
    let shape = day_curve(local.date_naive(), hour);
    let mut out = Vec::new();
    for (l, occ) in lots.iter().zip(occupancy.iter_mut()) {
        let cap = f64::from(l.capacity);
        let target = cap * l.peak * shape;
        let gap = target - f64::from(*occ);
        // Close a twentieth of the gap per simulated minute, plus turnover of about 3%
        // of the occupied spaces an hour each way.
        let minutes = step_secs / 60.0;
        let pull = gap.abs() * (1.0 - (-minutes / 20.0).exp());
        let turnover = f64::from(*occ).max(cap * 0.02) * 0.03 * minutes / 60.0;
        let (mut arrive, mut depart) = if gap > 0.0 {
            (rng.poisson(pull + turnover), rng.poisson(turnover))
        } else {
            (rng.poisson(turnover), rng.poisson(pull + turnover))
        };
        let ts = at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        while arrive + depart > 0 {
            let go_in = arrive > 0 && (depart == 0 || rng.next() < 0.5);
            if go_in {
                arrive -= 1;
                if *occ < l.capacity {
                    *occ += 1;
                    out.push(event(l, "ARRIVAL", Some(&ts)));
                }
            } else {
                depart -= 1;
                if *occ > 0 {
                    *occ -= 1;
                    out.push(event(l, "DEPARTURE", Some(&ts)));
                }
            }
        }
    }
    out
}

/// Send one request of `chunk` (a single event, or an array) and read the reply.
async fn send_one(client: &awc::Client, endpoint: &str, chunk: &[wire::EventIn]) -> Option<Reply> {
    let sent = match chunk {
        [one] => client.post(endpoint).send_json(one).await,
        many => client.post(endpoint).send_json(&many).await,
    };
    let mut resp = sent.ok()?;
    let status = resp.status().as_u16();
    Some(match status {
        200 if chunk.len() > 1 => match resp.json::<wire::BatchReply>().limit(64 << 20).await {
            Ok(batch) => Reply::Batch(batch),
            Err(_) => Reply::Failed,
        },
        200 => Reply::Acked,
        400 | 404 | 409 => Reply::Refused,
        _ => Reply::Failed,
    })
}

/// Send `events` as requests of `batch` events on `connections` connections; count.
async fn send_all(
    client: &awc::Client,
    url: &str,
    events: Vec<wire::EventIn>,
    batch: usize,
    connections: usize,
    counters: &Counters,
    latencies: &mut Vec<u32>,
) {
    let endpoint = format!("{url}/v1/events");
    let chunks: Vec<&[wire::EventIn]> = events.chunks(batch).collect();
    for group in chunks.chunks(connections) {
        let sends = group.iter().map(|chunk| {
            let endpoint = &endpoint;
            async move {
                let t = Instant::now();
                let reply = send_one(client, endpoint, chunk).await;
                (t.elapsed(), chunk.len(), reply)
            }
        });
        for (took, n, reply) in futures_util::future::join_all(sends).await {
            latencies.push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
            counters.count(n, reply);
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// Where the simulation stands: each lot's occupancy as the simulator knows it, and
/// simulated time (traffic) or the events still owed (load).
struct Traffic {
    occupancy: Vec<u32>,
    rng: Rng,
    sim_at: DateTime<Utc>,
    caught_up: bool,
    load_toggle: Vec<bool>,
    owed: f64,
}

impl Traffic {
    fn new(s: &Settings, occupancy: Vec<u32>) -> Traffic {
        Traffic {
            load_toggle: vec![false; occupancy.len()],
            occupancy,
            rng: Rng(s.seed),
            sim_at: s.start,
            caught_up: false,
            owed: 0.0,
        }
    }

    /// The events of the next `tick` of real time.
    fn step(&mut self, s: &Settings, tick: Duration) -> Vec<wire::EventIn> {
        let Some(rate) = s.rate else {
            // Simulated time never runs ahead of the clock (the event time rule): once
            // it has caught up, it goes on at real speed.
            let ahead = (tick.as_secs_f64() * s.speed * 1000.0) as i64;
            let wanted = self.sim_at + chrono::Duration::milliseconds(ahead);
            let next = wanted.min(Utc::now().max(self.sim_at));
            if next < wanted && !self.caught_up {
                self.caught_up = true;
                println!("simulate: simulated time has reached the present; going on in real time");
            }
            let step = (next - self.sim_at).as_seconds_f64();
            self.sim_at = next;
            let (lots, occupancy, rng) = (&s.lots, &mut self.occupancy, &mut self.rng);
            return traffic_step(lots, occupancy, next, step, s.timezone, rng);
        };
        // Load: `rate` events a second, spread over the lots, alternating so the lots
        // stay between empty and full.
        self.owed += rate * tick.as_secs_f64();
        let n = self.owed.floor() as usize;
        self.owed -= n as f64;
        (0..n)
            .map(|i| {
                let k = i % s.lots.len();
                self.load_toggle[k] = !self.load_toggle[k] || self.occupancy[k] == 0;
                let kind = if self.load_toggle[k] {
                    "ARRIVAL"
                } else {
                    "DEPARTURE"
                };
                event(&s.lots[k], kind, None)
            })
            .collect()
    }

    /// Simulated time as a progress line shows it (nothing in load mode).
    fn clock(&self, s: &Settings) -> String {
        match s.rate {
            Some(_) => String::new(),
            None => format!(
                ", simulated time {}",
                self.sim_at
                    .with_timezone(&s.timezone)
                    .format("%a %Y-%m-%d %H:%M")
            ),
        }
    }
}

/// Send `days` days of campus traffic before `s.start`, in simulated time at 5-minute
/// steps and as fast as the server takes them one after the other (batches of 1,000
/// events), so the lots have
/// a history (today's curve, a usual profile) before the live simulation starts at
/// `s.start`. Registers the lots first; returns the events sent. `progress(day, days,
/// events)` is called after each simulated day.
pub async fn prepare_history(
    s: &Settings,
    days: u32,
    progress: impl Fn(u32, u32, u64),
) -> anyhow::Result<u64> {
    let client = client(s);
    let url = s.url.trim_end_matches('/').to_owned();
    let mut at = s.start - chrono::Duration::days(i64::from(days));
    // Registered when their history starts: the features fold it in event time.
    register(&client, &url, &s.lots, Some(at)).await?;
    let mut occupancy = current_occupancy(&client, &url, &s.lots).await?;
    let mut rng = Rng(s.seed ^ 0x5eed);
    let counters = Counters::default();
    let mut latencies = Vec::new();
    let step = chrono::Duration::minutes(5);
    for day in 1..=days {
        let day_end = at + chrono::Duration::days(1);
        let mut events = Vec::new();
        while at < day_end {
            at += step;
            events.extend(traffic_step(
                &s.lots,
                &mut occupancy,
                at,
                300.0,
                s.timezone,
                &mut rng,
            ));
        }
        // One request at a time: a lot's events go in in their order (requests side by
        // side could put a departure before the arrival it follows).
        send_all(&client, &url, events, 1_000, 1, &counters, &mut latencies).await;
        let sent = counters.events.load(Ordering::Relaxed);
        progress(day, days, sent);
    }
    let failed =
        counters.errors.load(Ordering::Relaxed) + counters.rejected.load(Ordering::Relaxed);
    if failed > 0 {
        anyhow::bail!("{failed} of the history's events were refused or failed");
    }
    Ok(counters.events.load(Ordering::Relaxed))
}

/// The HTTP client of a run (with its bearer token, when given).
fn client(s: &Settings) -> awc::Client {
    let mut client = awc::Client::builder().timeout(Duration::from_secs(30));
    if let Some(t) = &s.token {
        client = client.bearer_auth(t);
    }
    client.finish()
}

/// Run until the duration is over or `stop` is set; returns the totals.
pub async fn run(s: &Settings, stop: Arc<AtomicBool>) -> anyhow::Result<Summary> {
    let client = client(s);
    let url = s.url.trim_end_matches('/').to_owned();
    register(&client, &url, &s.lots, None).await?;
    // Start each lot from what the server holds now.
    let mut traffic = Traffic::new(s, current_occupancy(&client, &url, &s.lots).await?);
    let counters = Counters::default();
    let mut latencies: Vec<u32> = Vec::new();
    let started = Instant::now();
    let mut last_report = Instant::now();
    let tick = Duration::from_millis(100);
    let (batch, connections) = (s.batch.get(), s.connections.get());
    while !stop.load(Ordering::Relaxed) && s.duration.is_none_or(|d| started.elapsed() < d) {
        let step_started = Instant::now();
        let events = traffic.step(s, tick);
        if !events.is_empty() {
            let (c, l) = (&counters, &mut latencies);
            send_all(&client, &url, events, batch, connections, c, l).await;
        }
        if last_report.elapsed() >= s.report_every {
            last_report = Instant::now();
            let secs = started.elapsed().as_secs_f64();
            let n = counters.events.load(Ordering::Relaxed);
            let rate = n as f64 / secs.max(1e-9);
            println!(
                "simulate: {n} events in {secs:.0} s ({rate:.0}/s){}",
                traffic.clock(s)
            );
        }
        if let Some(rest) = tick.checked_sub(step_started.elapsed()) {
            actix_web::rt::time::sleep(rest).await;
        }
    }
    Ok(counters.summary(started.elapsed().as_secs_f64(), latencies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weekday_mornings_fill_and_evenings_drain_and_weekends_stay_low() {
        assert!(curve(6.0, false) < 0.1);
        assert!(curve(11.0, false) > 0.85);
        assert!(curve(22.0, false) < 0.1);
        assert!(curve(11.0, true) < 0.3);
        assert!(curve(8.0, false) < curve(9.0, false));
    }

    #[test]
    fn traffic_moves_each_lot_toward_its_curve_within_bounds() {
        let lots = sfu_burnaby();
        let mut occ = vec![0; lots.len()];
        let mut rng = Rng(7);
        // A Tuesday, 06:00 to 12:00 Vancouver time, one-minute steps.
        let mut at: DateTime<Utc> = "2026-11-24T14:00:00Z".parse().unwrap();
        for _ in 0..360 {
            at += chrono::Duration::minutes(1);
            for e in traffic_step(
                &lots,
                &mut occ,
                at,
                60.0,
                chrono_tz::America::Vancouver,
                &mut rng,
            ) {
                assert!(lots.iter().any(|l| l.lot_id == e.lot_id));
            }
        }
        for (l, o) in lots.iter().zip(&occ) {
            assert!(*o <= l.capacity);
            let share = f64::from(*o) / f64::from(l.capacity);
            assert!(
                (share - l.peak * curve(12.0, false)).abs() < 0.15,
                "{} at {share}",
                l.lot_id
            );
        }
    }
}
