//! One load run: set up subscribers and publishers, publish for a while (or hold idle
//! connections), drain, and count: deliveries and acks in the measured window, end-to-end
//! latency of the messages sent in it, lost and duplicated messages over the whole run.

use crate::bayeux::{self, Incoming, Stamp};
use crate::conn::{self, BoxError, Endpoint, Http, Ws};
use crate::stats::{self, CpuMeter, Seen, now_us};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;

/// How a client talks to the endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum Transport {
    Websocket,
    LongPolling,
    /// Subscribers only: handshake, subscribe and connect over HTTP (a connection closed
    /// after them), then deliveries on an EventSource stream.
    Eventsource,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Websocket => "websocket",
            Transport::LongPolling => "long-polling",
            Transport::Eventsource => "eventsource",
        }
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    pub sub_endpoint: Endpoint,
    pub pub_endpoint: Endpoint,
    pub sub_transport: Transport,
    pub pub_transport: Transport,
    pub publishers: usize,
    pub subscribers: usize,
    pub channels: usize,
    /// Publishes per second over all publishers; 0: as fast as the window allows.
    pub rate: f64,
    pub warmup: Duration,
    pub duration: Duration,
    /// Max rate: most messages of one publisher not yet acked or not yet delivered to all.
    pub window: u64,
    /// Bytes of padding in each payload.
    pub payload: usize,
    pub source_addrs: usize,
    pub setup_concurrency: usize,
    pub drain_grace: Duration,
    /// Idle run: hold the subscribers this long, then publish one message per channel.
    pub idle_hold: Option<Duration>,
    pub server_pids: Vec<u32>,
    pub redis_pid: Option<u32>,
}

struct PublisherState {
    sent: AtomicU64,
    acked: AtomicU64,
    acked_per_channel: Vec<AtomicU64>,
    /// Deliveries the sent messages should make (sum of their channels' subscribers).
    expected_deliveries: AtomicU64,
    delivered: AtomicU64,
    waiting: AtomicBool,
    notify: Notify,
}

struct Shared {
    pubs: Vec<PublisherState>,
    /// Subscribers per channel.
    recipients: Vec<u64>,
    window_start: AtomicU64,
    window_end: AtomicU64,
    delivered_in_window: AtomicU64,
    acks_in_window: AtomicU64,
    delivered_total: AtomicU64,
    ack_errors: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
    ready: AtomicU64,
    failed: AtomicU64,
    closed: AtomicU64,
    /// Handshakes completed per second since the ramp began.
    handshakes: Vec<AtomicU64>,
    ramp_start: AtomicU64,
    ramp_last: AtomicU64,
}

impl Shared {
    fn error(&self, what: String) {
        self.errors.fetch_add(1, Relaxed);
        if let Ok(mut first) = self.first_error.lock()
            && first.is_none()
        {
            *first = Some(what);
        }
    }

    fn in_window(&self, t: u64) -> bool {
        t >= self.window_start.load(Relaxed) && t < self.window_end.load(Relaxed)
    }
}

/// What one subscriber saw.
struct SubReport {
    channel: usize,
    histogram: Histogram<u64>,
    seen: Vec<Seen>,
    unexpected: u64,
}

/// `LOADGEN_SLOW_MS=N`: print every delivery slower than N ms (to find stalls in time).
fn slow_threshold_us() -> Option<u64> {
    static SLOW: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *SLOW.get_or_init(|| {
        std::env::var("LOADGEN_SLOW_MS").ok().and_then(|v| v.parse::<f64>().ok()).map(|ms| (ms * 1000.0) as u64)
    })
}

/// Counts what arrives at one subscriber.
struct SubCore {
    shared: Arc<Shared>,
    channel: usize,
    histogram: Histogram<u64>,
    seen: Vec<Seen>,
    unexpected: u64,
    per_publisher: Vec<u64>,
    /// Reused for each frame's stamps.
    stamps: Vec<Stamp>,
}

impl SubCore {
    fn new(shared: Arc<Shared>, channel: usize) -> Self {
        let n = shared.pubs.len();
        Self {
            shared,
            channel,
            histogram: stats::histogram(),
            seen: (0..n).map(|_| Seen::default()).collect(),
            unexpected: 0,
            per_publisher: vec![0; n],
            stamps: Vec::new(),
        }
    }

    /// Records the messages of one frame or reply body; true when it held a connect reply.
    fn on_text(&mut self, text: &str) -> Result<bool, String> {
        let mut stamps = std::mem::take(&mut self.stamps);
        stamps.clear();
        let connect_reply = match bayeux::scan(text, &mut stamps) {
            Some(connect_reply) => connect_reply,
            None => {
                let messages = bayeux::parse(text).map_err(|e| format!("unparsable frame: {e}: {text:.200}"))?;
                let mut connect_reply = false;
                for message in &messages {
                    if let Some(stamp) = message.delivery() {
                        stamps.push(stamp);
                    } else if message.channel() == "/meta/connect" {
                        if message.successful != Some(true) {
                            return Err(format!("connect refused: {}", message.error.as_deref().unwrap_or("?")));
                        }
                        connect_reply = true;
                    }
                }
                connect_reply
            }
        };
        let now = now_us();
        let (start, end) = (self.shared.window_start.load(Relaxed), self.shared.window_end.load(Relaxed));
        let delivered = stamps.len() as u64;
        let in_window = if now >= start && now < end { delivered } else { 0 };
        for stamp in &stamps {
            self.record(*stamp, now, start, end);
        }
        self.stamps = stamps;
        if delivered > 0 {
            self.shared.delivered_total.fetch_add(delivered, Relaxed);
            if in_window > 0 {
                self.shared.delivered_in_window.fetch_add(in_window, Relaxed);
            }
            for (p, n) in self.per_publisher.iter_mut().enumerate() {
                if *n > 0 {
                    let state = &self.shared.pubs[p];
                    state.delivered.fetch_add(*n, Relaxed);
                    if state.waiting.load(Relaxed) {
                        state.notify.notify_one();
                    }
                    *n = 0;
                }
            }
        }
        Ok(connect_reply)
    }

    fn record(&mut self, stamp: Stamp, now: u64, start: u64, end: u64) {
        let p = stamp.p as usize;
        if p >= self.seen.len() || stamp.c as usize != self.channel {
            self.unexpected += 1;
            return;
        }
        self.per_publisher[p] += 1;
        self.seen[p].record(stamp.s);
        if stamp.t >= start && stamp.t < end {
            let latency = now.saturating_sub(stamp.t).max(1);
            if let Some(slow) = slow_threshold_us()
                && latency > slow
            {
                eprintln!(
                    "slow: sent at {:.3} s, publisher {} seq {} channel {}: {:.3} ms",
                    stamp.t as f64 / 1e6,
                    stamp.p,
                    stamp.s,
                    stamp.c,
                    latency as f64 / 1e3
                );
            }
            self.histogram.saturating_record(latency);
        }
    }

    fn report(self) -> SubReport {
        SubReport { channel: self.channel, histogram: self.histogram, seen: self.seen, unexpected: self.unexpected }
    }
}

/// Everything a run measured.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Outcome {
    pub subscribers_ready: u64,
    pub subscribers_failed: u64,
    pub publishes_sent: u64,
    pub publishes_acked: u64,
    pub ack_errors: u64,
    pub delivered: u64,
    pub expected_deliveries: u64,
    pub delivered_per_s: f64,
    pub acks_per_s: f64,
    pub latency_samples: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    pub closed_early: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub generator_cpu_s: f64,
    pub generator_cpu_pct: f64,
    pub server_cpu_pct: Option<f64>,
    pub redis_cpu_pct: Option<f64>,
    pub measured_s: f64,
    // Idle runs.
    pub ramp_s: Option<f64>,
    pub handshakes_per_s: Option<f64>,
    pub peak_handshakes_per_s: Option<u64>,
    pub server_rss_base_kib: Option<u64>,
    pub server_rss_kib: Option<u64>,
    pub server_kib_per_client: Option<f64>,
}

fn progress(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

async fn next_text(ws: &mut Ws) -> Result<String, BoxError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(60), ws.next()).await {
            Err(_) => return Err("no reply within 60 s".into()),
            Ok(None) => return Err("socket closed".into()),
            Ok(Some(Err(e))) => return Err(e.into()),
            Ok(Some(Ok(WsMessage::Text(t)))) => return Ok(t.as_str().to_string()),
            Ok(Some(Ok(WsMessage::Close(_)))) => return Err("socket closed by the server".into()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

fn note_handshake(shared: &Shared) {
    let now = now_us();
    let start = shared.ramp_start.load(Relaxed);
    let second = (now.saturating_sub(start) / 1_000_000) as usize;
    if let Some(bucket) = shared.handshakes.get(second) {
        bucket.fetch_add(1, Relaxed);
    }
    shared.ramp_last.fetch_max(now, Relaxed);
}

struct SubSpec {
    index: usize,
    channel: usize,
    channel_name: String,
}

async fn subscriber(
    spec: SubSpec,
    plan: Arc<Plan>,
    shared: Arc<Shared>,
    setup: Arc<Semaphore>,
    cancel: CancellationToken,
) -> Result<SubReport, BoxError> {
    let local = conn::source_address(&plan.sub_endpoint, spec.index, plan.source_addrs);
    let mut core = SubCore::new(shared.clone(), spec.channel);
    let permit = setup.acquire_owned().await?;
    match plan.sub_transport {
        Transport::Websocket => {
            let mut ws = conn::websocket(&plan.sub_endpoint, local, plan.idle_hold.is_some()).await?;
            ws.send(WsMessage::text(bayeux::handshake())).await?;
            let client_id = bayeux::client_id_of(&next_text(&mut ws).await?)?;
            note_handshake(&shared);
            ws.send(WsMessage::text(bayeux::subscribe(&client_id, &spec.channel_name))).await?;
            bayeux::check_reply(&next_text(&mut ws).await?, "/meta/subscribe")?;
            let mut connects = 0u64;
            ws.send(WsMessage::text(bayeux::connect(&client_id, "websocket", connects))).await?;
            shared.ready.fetch_add(1, Relaxed);
            drop(permit);
            loop {
                let frame = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    frame = ws.next() => frame,
                };
                match frame {
                    Some(Ok(WsMessage::Text(text))) => match core.on_text(text.as_str()) {
                        Ok(true) => {
                            connects += 1;
                            ws.send(WsMessage::text(bayeux::connect(&client_id, "websocket", connects))).await?;
                        }
                        Ok(false) => {}
                        Err(e) => {
                            shared.error(e);
                            shared.closed.fetch_add(1, Relaxed);
                            break;
                        }
                    },
                    Some(Ok(WsMessage::Close(_))) | None => {
                        shared.closed.fetch_add(1, Relaxed);
                        break;
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        shared.error(format!("subscriber socket: {e}"));
                        shared.closed.fetch_add(1, Relaxed);
                        break;
                    }
                }
            }
        }
        Transport::LongPolling => {
            let mut http = Http::open(&plan.sub_endpoint, local).await?;
            let client_id = bayeux::client_id_of(std::str::from_utf8(&http.post(bayeux::handshake()).await?)?)?;
            note_handshake(&shared);
            let reply = http.post(bayeux::subscribe(&client_id, &spec.channel_name)).await?;
            bayeux::check_reply(std::str::from_utf8(&reply)?, "/meta/subscribe")?;
            shared.ready.fetch_add(1, Relaxed);
            drop(permit);
            let mut connects = 0u64;
            loop {
                let body = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    body = http.post(bayeux::connect(&client_id, "long-polling", connects)) => body,
                };
                connects += 1;
                let outcome = match body {
                    Ok(body) => match std::str::from_utf8(&body) {
                        Ok(text) => core.on_text(text).map(|_| ()),
                        Err(e) => Err(format!("reply is not UTF-8: {e}")),
                    },
                    Err(e) => Err(format!("long-polling connect: {e}")),
                };
                if let Err(e) = outcome {
                    shared.error(e);
                    shared.closed.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
        Transport::Eventsource => {
            // As Faye's EventSource transport: messages go over HTTP (here a connection that is
            // closed after set-up, so each client holds one socket: its stream), deliveries
            // arrive on the stream. The keepalive connect every `interval` (the server's
            // timeout, 45 s) is not sent: runs hold their clients for less.
            let mut http = Http::open(&plan.sub_endpoint, local).await?;
            let client_id = bayeux::client_id_of(std::str::from_utf8(&http.post(bayeux::handshake()).await?)?)?;
            note_handshake(&shared);
            let reply = http.post(bayeux::subscribe(&client_id, &spec.channel_name)).await?;
            bayeux::check_reply(std::str::from_utf8(&reply)?, "/meta/subscribe")?;
            let mut stream = conn::EventStream::open(&plan.sub_endpoint, local, &client_id).await?;
            let reply = http.post(bayeux::connect(&client_id, "eventsource", 0)).await?;
            bayeux::check_reply(std::str::from_utf8(&reply)?, "/meta/connect")?;
            drop(http);
            shared.ready.fetch_add(1, Relaxed);
            drop(permit);
            loop {
                let event = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    event = stream.next_event() => event,
                };
                let outcome = match event {
                    Ok(Some(text)) => core.on_text(&text).map(|_| ()),
                    Ok(None) => Err("eventsource stream ended".to_string()),
                    Err(e) => Err(format!("eventsource: {e}")),
                };
                if let Err(e) = outcome {
                    shared.error(e);
                    shared.closed.fetch_add(1, Relaxed);
                    break;
                }
            }
        }
    }
    Ok(core.report())
}

/// A publisher's connection, set up before the clock starts.
enum PubConn {
    Ws(Ws, String),
    Http(Http, String),
}

async fn open_publisher(plan: &Plan, index: usize) -> Result<PubConn, BoxError> {
    let local = conn::source_address(&plan.pub_endpoint, index, plan.source_addrs);
    match plan.pub_transport {
        Transport::Websocket => {
            let mut ws = conn::websocket(&plan.pub_endpoint, local, false).await?;
            ws.send(WsMessage::text(bayeux::handshake())).await?;
            let client_id = bayeux::client_id_of(&next_text(&mut ws).await?)?;
            Ok(PubConn::Ws(ws, client_id))
        }
        Transport::LongPolling | Transport::Eventsource => {
            let mut http = Http::open(&plan.pub_endpoint, local).await?;
            let client_id = bayeux::client_id_of(std::str::from_utf8(&http.post(bayeux::handshake()).await?)?)?;
            Ok(PubConn::Http(http, client_id))
        }
    }
}

/// Decides how many messages a publisher may send now.
struct Pacer {
    p: usize,
    rate: f64,
    start: u64,
    end: u64,
    limit: u64,
    window: u64,
    average_recipients: f64,
    /// Deliveries given up on after a stall, so a lost message cannot stop the run.
    forgiven: u64,
    stalled_since: Option<Instant>,
}

impl Pacer {
    fn due(&mut self, shared: &Shared, sent: u64, now: u64) -> u64 {
        if sent >= self.limit || now >= self.end {
            return 0;
        }
        let room = self.limit - sent;
        if self.rate > 0.0 {
            let due = (now.saturating_sub(self.start) as f64 * self.rate / 1e6) as u64 + 1;
            return due.saturating_sub(sent).min(room);
        }
        let allowed = self.room(shared, sent).min(room);
        if allowed > 0 {
            self.stalled_since = None;
        } else {
            let since = *self.stalled_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                // Something was lost (it is counted at the end): stop waiting for it.
                let state = &shared.pubs[self.p];
                self.forgiven = state.expected_deliveries.load(Relaxed).saturating_sub(state.delivered.load(Relaxed));
                self.stalled_since = None;
            }
        }
        allowed
    }

    /// Max rate: how many more messages the window admits.
    fn room(&self, shared: &Shared, sent: u64) -> u64 {
        let state = &shared.pubs[self.p];
        let unacked = sent.saturating_sub(state.acked.load(Relaxed));
        let undelivered = state
            .expected_deliveries
            .load(Relaxed)
            .saturating_sub(state.delivered.load(Relaxed))
            .saturating_sub(self.forgiven);
        let undelivered_messages = if self.average_recipients > 0.0 {
            (undelivered as f64 / self.average_recipients).ceil() as u64
        } else {
            0
        };
        self.window.saturating_sub(unacked.max(undelivered_messages))
    }

    /// When message `k` is due at a fixed rate.
    fn scheduled(&self, k: u64) -> u64 {
        self.start + (k as f64 * 1e6 / self.rate) as u64
    }

    async fn wait(&self, shared: &Shared, sent: u64) {
        if self.rate > 0.0 {
            let next = self.scheduled(sent).min(self.end);
            tokio::time::sleep_until(stats::instant_at(next).into()).await;
        } else {
            let state = &shared.pubs[self.p];
            state.waiting.store(true, Relaxed);
            // Re-check once the flag is up: what arrived before it sent no notification.
            if self.room(shared, sent) == 0 {
                let _ = tokio::time::timeout(Duration::from_millis(5), state.notify.notified()).await;
            }
            state.waiting.store(false, Relaxed);
        }
    }
}

/// What a publisher writes with: its client id, the channels, its sequence numbers.
struct PubCtx {
    p: usize,
    client_id: String,
    channel_names: Arc<Vec<String>>,
    shared: Arc<Shared>,
    pad: Arc<String>,
    seqs: Vec<u64>,
}

impl PubCtx {
    /// Builds the next `n` publishes, stamped now, counting them as sent.
    fn batch(&mut self, n: u64) -> Vec<String> {
        let state = &self.shared.pubs[self.p];
        let now = now_us();
        let mut texts = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let k = state.sent.load(Relaxed);
            let c = (k as usize + self.p) % self.channel_names.len();
            let stamp = Stamp { p: self.p as u32, c: c as u32, s: self.seqs[c], t: now };
            self.seqs[c] += 1;
            state.expected_deliveries.fetch_add(self.shared.recipients[c], Relaxed);
            state.sent.fetch_add(1, Relaxed);
            texts.push(bayeux::publish(&self.client_id, &self.channel_names[c], k + 1, stamp, &self.pad));
        }
        texts
    }
}

fn count_acks(shared: &Shared, p: usize, text: &str) -> Result<(), String> {
    let messages = bayeux::parse(text).map_err(|e| format!("unparsable ack frame: {e}"))?;
    let state = &shared.pubs[p];
    let now = now_us();
    let mut acked = 0;
    for message in messages.iter().filter(|m: &&Incoming| !m.is_meta() && m.successful.is_some()) {
        if message.successful == Some(true) {
            acked += 1;
            if let Some(c) = bayeux::channel_index(message.channel())
                && let Some(counter) = state.acked_per_channel.get(c)
            {
                counter.fetch_add(1, Relaxed);
            }
        } else {
            shared.ack_errors.fetch_add(1, Relaxed);
            shared.error(format!("publish refused: {}", message.error.as_deref().unwrap_or("?")));
        }
    }
    if acked > 0 {
        state.acked.fetch_add(acked, Relaxed);
        if shared.in_window(now) {
            shared.acks_in_window.fetch_add(acked, Relaxed);
        }
        if state.waiting.load(Relaxed) {
            state.notify.notify_one();
        }
    }
    Ok(())
}

async fn ack_reader(shared: Arc<Shared>, p: usize, mut stream: SplitStream<Ws>, cancel: CancellationToken) {
    loop {
        let frame = tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            frame = stream.next() => frame,
        };
        match frame {
            Some(Ok(WsMessage::Text(text))) => {
                if let Err(e) = count_acks(&shared, p, text.as_str()) {
                    shared.error(e);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return shared.error(format!("publisher socket: {e}")),
            None => return,
        }
    }
}

async fn publisher(
    conn: PubConn,
    mut pacer: Pacer,
    channel_names: Arc<Vec<String>>,
    shared: Arc<Shared>,
    pad: Arc<String>,
    cancel: CancellationToken,
) -> Result<Option<SplitSink<Ws, WsMessage>>, BoxError> {
    let p = pacer.p;
    let seqs = vec![0u64; channel_names.len()];
    match conn {
        PubConn::Ws(ws, client_id) => {
            let mut ctx = PubCtx { p, client_id, channel_names, shared: shared.clone(), pad, seqs };
            let (mut sink, stream) = ws.split();
            tokio::spawn(ack_reader(shared.clone(), p, stream, cancel));
            loop {
                let sent = shared.pubs[p].sent.load(Relaxed);
                let now = now_us();
                if sent >= pacer.limit || now >= pacer.end {
                    break;
                }
                let n = pacer.due(&shared, sent, now).min(64);
                if n == 0 {
                    pacer.wait(&shared, sent).await;
                    continue;
                }
                for text in ctx.batch(n) {
                    sink.feed(WsMessage::text(text)).await?;
                }
                sink.flush().await?;
            }
            Ok(Some(sink))
        }
        PubConn::Http(mut http, client_id) => {
            let mut ctx = PubCtx { p, client_id, channel_names, shared: shared.clone(), pad, seqs };
            loop {
                let sent = shared.pubs[p].sent.load(Relaxed);
                let now = now_us();
                if sent >= pacer.limit || now >= pacer.end {
                    break;
                }
                let n = pacer.due(&shared, sent, now).min(100);
                if n == 0 {
                    pacer.wait(&shared, sent).await;
                    continue;
                }
                let body = format!("[{}]", ctx.batch(n).join(","));
                let reply = http.post(body).await?;
                count_acks(&shared, p, std::str::from_utf8(&reply)?)?;
            }
            Ok(None)
        }
    }
}

fn percent(seconds: Option<f64>, over: f64) -> Option<f64> {
    seconds.map(|s| if over > 0.0 { s / over * 100.0 } else { 0.0 })
}

/// Runs the plan and returns what it measured.
pub async fn run(plan: Plan) -> Result<Outcome, BoxError> {
    let plan = Arc::new(plan);
    let run_id = format!("{:x}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis());
    let prefix = if plan.idle_hold.is_some() { "idle" } else { "lg" };
    let channel_names: Arc<Vec<String>> =
        Arc::new((0..plan.channels).map(|c| format!("/{prefix}/{run_id}/{c}")).collect());
    let mut recipients = vec![0u64; plan.channels];
    for i in 0..plan.subscribers {
        recipients[i % plan.channels] += 1;
    }
    let shared = Arc::new(Shared {
        pubs: (0..plan.publishers)
            .map(|_| PublisherState {
                sent: AtomicU64::new(0),
                acked: AtomicU64::new(0),
                acked_per_channel: (0..plan.channels).map(|_| AtomicU64::new(0)).collect(),
                expected_deliveries: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                waiting: AtomicBool::new(false),
                notify: Notify::new(),
            })
            .collect(),
        recipients: recipients.clone(),
        window_start: AtomicU64::new(u64::MAX),
        window_end: AtomicU64::new(u64::MAX),
        delivered_in_window: AtomicU64::new(0),
        acks_in_window: AtomicU64::new(0),
        delivered_total: AtomicU64::new(0),
        ack_errors: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
        ready: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        closed: AtomicU64::new(0),
        handshakes: (0..7200).map(|_| AtomicU64::new(0)).collect(),
        ramp_start: AtomicU64::new(now_us()),
        ramp_last: AtomicU64::new(0),
    });
    let mut outcome = Outcome::default();

    // Set up: subscribers (bounded concurrency), then publishers.
    let rss_base = plan.server_pids.first().and_then(|&pid| stats::rss_kib(pid));
    let setup = Arc::new(Semaphore::new(plan.setup_concurrency.max(1)));
    let stop_subscribers = CancellationToken::new();
    let ramp_bar = progress(plan.subscribers as u64, "setup   [{bar:40}] {pos}/{len} subscribers {msg}");
    let ramp_started = Instant::now();
    shared.ramp_start.store(now_us(), Relaxed);
    let mut subscriber_tasks: Vec<JoinHandle<Result<SubReport, BoxError>>> = Vec::with_capacity(plan.subscribers);
    for index in 0..plan.subscribers {
        let channel = index % plan.channels;
        let spec = SubSpec { index, channel, channel_name: channel_names[channel].clone() };
        let (plan, shared, setup, cancel) = (plan.clone(), shared.clone(), setup.clone(), stop_subscribers.clone());
        subscriber_tasks.push(tokio::spawn(async move {
            let result = subscriber(spec, plan, shared.clone(), setup, cancel).await;
            if let Err(e) = &result {
                shared.failed.fetch_add(1, Relaxed);
                shared.error(format!("subscriber: {e}"));
            }
            result
        }));
    }
    loop {
        let (ready, failed) = (shared.ready.load(Relaxed), shared.failed.load(Relaxed));
        ramp_bar.set_position(ready + failed);
        let elapsed = ramp_started.elapsed().as_secs_f64().max(1e-3);
        ramp_bar.set_message(format!("{:.0} handshakes/s, {failed} failed", ready as f64 / elapsed));
        if ready + failed >= plan.subscribers as u64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ramp_bar.finish_and_clear();
    outcome.subscribers_ready = shared.ready.load(Relaxed);
    outcome.subscribers_failed = shared.failed.load(Relaxed);
    let ramp_s = (shared.ramp_last.load(Relaxed).saturating_sub(shared.ramp_start.load(Relaxed))) as f64 / 1e6;
    outcome.ramp_s = Some(ramp_s);
    let handshakes: u64 = shared.handshakes.iter().map(|b| b.load(Relaxed)).sum();
    outcome.handshakes_per_s = Some(if ramp_s > 0.0 { handshakes as f64 / ramp_s } else { 0.0 });
    outcome.peak_handshakes_per_s = shared.handshakes.iter().map(|b| b.load(Relaxed)).max();

    let mut publishers = Vec::with_capacity(plan.publishers);
    for index in 0..plan.publishers {
        publishers.push(open_publisher(&plan, plan.subscribers + index).await?);
    }

    if let Some(hold) = plan.idle_hold {
        // Let the server settle (connects held, buffers allocated), then measure its memory.
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let (Some(&pid), Some(base)) = (plan.server_pids.first(), rss_base)
            && let Some(rss) = stats::rss_kib(pid)
        {
            outcome.server_rss_base_kib = Some(base);
            outcome.server_rss_kib = Some(rss);
            let held = outcome.subscribers_ready.max(1) as f64;
            outcome.server_kib_per_client = Some(rss.saturating_sub(base) as f64 / held);
        }
        let bar = progress(hold.as_millis() as u64, "hold    [{bar:40}] {msg}");
        let held_since = Instant::now();
        while held_since.elapsed() < hold {
            bar.set_position(held_since.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{} clients held, {} closed",
                shared.ready.load(Relaxed) - shared.closed.load(Relaxed),
                shared.closed.load(Relaxed)
            ));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bar.finish_and_clear();
    }

    // The measured run.
    let t0 = now_us() + 10_000;
    let (window_start, window_end, limit) = match plan.idle_hold {
        // Idle: one message per channel, to check every held client still receives.
        Some(_) => (t0, t0 + plan.drain_grace.as_micros() as u64, plan.channels as u64),
        None => {
            let start = t0 + plan.warmup.as_micros() as u64;
            (start, start + plan.duration.as_micros() as u64, u64::MAX)
        }
    };
    shared.window_start.store(window_start, Relaxed);
    shared.window_end.store(window_end, Relaxed);
    let stop_acks = CancellationToken::new();
    let pad = Arc::new("x".repeat(plan.payload));
    let total_recipients: u64 = recipients.iter().sum();
    let average_recipients = total_recipients as f64 / plan.channels as f64;
    let mut publisher_tasks = Vec::new();
    for (p, conn) in publishers.into_iter().enumerate() {
        let pacer = Pacer {
            p,
            rate: plan.rate / plan.publishers as f64,
            start: t0,
            end: window_end,
            limit: if plan.idle_hold.is_some() { limit / plan.publishers as u64 } else { limit },
            window: plan.window,
            average_recipients,
            forgiven: 0,
            stalled_since: None,
        };
        let task = publisher(conn, pacer, channel_names.clone(), shared.clone(), pad.clone(), stop_acks.clone());
        publisher_tasks.push(tokio::spawn(task));
    }
    tokio::time::sleep_until(stats::instant_at(window_start).into()).await;
    let generator_cpu = stats::cpu_seconds(None);
    let server_cpu = CpuMeter::start(&plan.server_pids);
    let redis_cpu = CpuMeter::start(&plan.redis_pid.into_iter().collect::<Vec<_>>());
    let measured = Instant::now();
    if plan.idle_hold.is_none() {
        let bar = progress(plan.duration.as_millis() as u64, "measure [{bar:40}] {elapsed_precise} {msg}");
        let mut last = (Instant::now(), 0u64);
        while now_us() < window_end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let delivered = shared.delivered_total.load(Relaxed);
            let rate = (delivered - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
            last = (Instant::now(), delivered);
            bar.set_position(measured.elapsed().as_millis() as u64);
            bar.set_message(format!(
                "{rate:.0} deliveries/s, {} acked, {} errors",
                shared.pubs.iter().map(|s| s.acked.load(Relaxed)).sum::<u64>(),
                shared.errors.load(Relaxed)
            ));
        }
        bar.finish_and_clear();
    }
    let measured_s = if plan.idle_hold.is_none() { plan.duration.as_secs_f64() } else { 0.0 };
    let mut sinks = Vec::new();
    for task in publisher_tasks {
        match task.await {
            Ok(Ok(sink)) => sinks.push(sink),
            Ok(Err(e)) => shared.error(format!("publisher: {e}")),
            Err(e) => shared.error(format!("publisher task: {e}")),
        }
    }
    if plan.idle_hold.is_none() {
        let elapsed = measured.elapsed().as_secs_f64();
        outcome.generator_cpu_s = stats::cpu_seconds(None).zip(generator_cpu).map(|(b, a)| b - a).unwrap_or(0.0);
        outcome.generator_cpu_pct = outcome.generator_cpu_s / elapsed * 100.0;
        outcome.server_cpu_pct = percent(server_cpu.elapsed(), elapsed);
        outcome.redis_cpu_pct = percent(redis_cpu.elapsed(), elapsed);
    }

    // Drain: wait for every ack and every delivery the acked messages owe.
    let expected = |shared: &Shared| -> u64 {
        shared
            .pubs
            .iter()
            .map(|s| s.acked_per_channel.iter().zip(&recipients).map(|(a, r)| a.load(Relaxed) * r).sum::<u64>())
            .sum()
    };
    let drain_started = Instant::now();
    let mut last_progress = (Instant::now(), 0u64);
    loop {
        let sent: u64 = shared.pubs.iter().map(|s| s.sent.load(Relaxed)).sum();
        let acked: u64 =
            shared.pubs.iter().map(|s| s.acked.load(Relaxed)).sum::<u64>() + shared.ack_errors.load(Relaxed);
        let delivered = shared.delivered_total.load(Relaxed);
        if acked >= sent && delivered >= expected(&shared) {
            break;
        }
        if delivered + acked != last_progress.1 {
            last_progress = (Instant::now(), delivered + acked);
        }
        if drain_started.elapsed() > plan.drain_grace || last_progress.0.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_acks.cancel();
    stop_subscribers.cancel();
    drop(sinks);

    // Count.
    let mut histogram = stats::histogram();
    let acked: Vec<Vec<u64>> =
        shared.pubs.iter().map(|s| s.acked_per_channel.iter().map(|a| a.load(Relaxed)).collect()).collect();
    for task in subscriber_tasks {
        let Ok(Ok(report)) = task.await else { continue };
        let _ = histogram.add(&report.histogram);
        outcome.unexpected += report.unexpected;
        for (p, seen) in report.seen.iter().enumerate() {
            outcome.duplicated += seen.duplicates;
            outcome.lost += acked[p][report.channel].saturating_sub(seen.unique);
        }
    }
    // Subscribers that never came up lose everything sent to their channel.
    outcome.publishes_sent = shared.pubs.iter().map(|s| s.sent.load(Relaxed)).sum();
    outcome.publishes_acked = shared.pubs.iter().map(|s| s.acked.load(Relaxed)).sum();
    outcome.ack_errors = shared.ack_errors.load(Relaxed);
    outcome.delivered = shared.delivered_total.load(Relaxed);
    outcome.expected_deliveries = expected(&shared);
    if outcome.subscribers_failed > 0 && plan.subscribers > 0 {
        let per_subscriber = outcome.expected_deliveries / plan.subscribers as u64;
        outcome.lost += per_subscriber * outcome.subscribers_failed;
    }
    outcome.measured_s = measured_s;
    if measured_s > 0.0 {
        outcome.delivered_per_s = shared.delivered_in_window.load(Relaxed) as f64 / measured_s;
        outcome.acks_per_s = shared.acks_in_window.load(Relaxed) as f64 / measured_s;
    }
    outcome.latency_samples = histogram.len();
    if !histogram.is_empty() {
        let ms = |v: u64| v as f64 / 1000.0;
        outcome.p50_ms = ms(histogram.value_at_quantile(0.50));
        outcome.p90_ms = ms(histogram.value_at_quantile(0.90));
        outcome.p99_ms = ms(histogram.value_at_quantile(0.99));
        outcome.p999_ms = ms(histogram.value_at_quantile(0.999));
        outcome.max_ms = ms(histogram.max());
    }
    outcome.closed_early = shared.closed.load(Relaxed);
    outcome.errors = shared.errors.load(Relaxed);
    outcome.first_error = shared.first_error.lock().ok().and_then(|e| e.clone());
    Ok(outcome)
}
