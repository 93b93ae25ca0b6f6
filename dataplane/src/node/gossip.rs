//! The tokio shell around the sans-IO gossip core: feeds it the time and what arrives on PWP
//! service 0x01, carries what it sends (a QUIC datagram when the envelope fits one, else a
//! stream of the gossip service), joins through seeds, answers queries, and reports membership
//! changes to the replication layer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use pleiades_proto::payload_type;
use pleiades_proto::v1;
use pleiades_proto::wire::Service;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, error, info, warn};

use crate::clock::Hlc;
use crate::gossip::codec;
use crate::gossip::events::{Cre, CreKind, QueryAnswer, Tags};
use crate::gossip::rate::PeerRateLimit;
use crate::gossip::swim::{Envelope, Event, Message, Millis, NodeId, Output, State, Swim, SwimConfig};
use crate::observe::KindLabels;
use crate::range::Ranges;
use crate::transport::pool::Peers;
use crate::transport::stream::PwpStream;

/// Inbound envelopes queued for the core; beyond this, datagrams are dropped (as the network
/// would) rather than letting a flood grow memory.
const INBOUND_QUEUE: usize = 4_096;
/// How often the core's timers are advanced.
const TICK: Duration = Duration::from_millis(10);
/// How often the clock offsets are judged (and the clock fenced or freed).
const CLOCK_CHECK: Duration = Duration::from_secs(1);
/// The share of `clock.max-offset-ms` a node's clock may be off from a majority before it is
/// fenced (CockroachDB's 80 %): fenced before the bound itself is crossed.
const TOLERATED_SHARE_OF_MAX_OFFSET: f64 = 0.8;
/// Deadline of a stream carrying one envelope.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabels {
    /// `in` or `out`.
    pub direction: &'static str,
    /// `datagram` or `stream`.
    pub transport: &'static str,
}

pub struct GossipMetrics {
    members: Family<StateLabels, Gauge>,
    probes: Counter,
    probes_failed: Counter,
    indirect_probes: Counter,
    suspicions: Counter,
    refutations: Counter,
    false_positives: Counter,
    messages: Family<TransportLabels, Counter>,
    bytes: Family<TransportLabels, Counter>,
    malformed: Counter,
    dropped: Counter,
    rate_limited: Counter,
    health_score: Gauge,
    coordinate_error: Gauge<f64, AtomicU64>,
    events: Family<KindLabels, Counter>,
    clock_offset: Gauge<f64, AtomicU64>,
    clock_fenced: Gauge,
}

impl GossipMetrics {
    pub fn new(registry: &mut Registry) -> Arc<Self> {
        let metrics = GossipMetrics {
            members: Family::default(),
            probes: Counter::default(),
            probes_failed: Counter::default(),
            indirect_probes: Counter::default(),
            suspicions: Counter::default(),
            refutations: Counter::default(),
            false_positives: Counter::default(),
            messages: Family::default(),
            bytes: Family::default(),
            malformed: Counter::default(),
            dropped: Counter::default(),
            rate_limited: Counter::default(),
            health_score: Gauge::default(),
            coordinate_error: Gauge::default(),
            events: Family::default(),
            clock_offset: Gauge::default(),
            clock_fenced: Gauge::default(),
        };
        for state in ["alive", "suspect", "dead", "left"] {
            metrics.members.get_or_create(&StateLabels { state }).set(0);
        }
        for kind in ["join", "leave", "update", "query"] {
            let _ = metrics.events.get_or_create(&KindLabels { kind });
        }
        for direction in ["in", "out"] {
            for transport in ["datagram", "stream"] {
                let labels = TransportLabels { direction, transport };
                let _ = metrics.messages.get_or_create(&labels);
                let _ = metrics.bytes.get_or_create(&labels);
            }
        }
        let r = registry.sub_registry_with_prefix("pleiades_gossip");
        r.register("members", "Members by state, as this node sees them (itself included)", metrics.members.clone());
        r.register("probes", "Direct probes sent", metrics.probes.clone());
        r.register("probes_failed", "Probes that closed with no ack, direct or relayed", metrics.probes_failed.clone());
        r.register("indirect_probes", "Probes that went indirect", metrics.indirect_probes.clone());
        r.register("suspicions", "Members this node started suspecting", metrics.suspicions.clone());
        r.register("refutations", "Suspicions of this node that it refuted", metrics.refutations.clone());
        r.register("false_positives", "Members declared dead that then proved alive", metrics.false_positives.clone());
        r.register("messages", "Gossip messages by direction and transport", metrics.messages.clone());
        r.register("bytes", "Gossip bytes by direction and transport", metrics.bytes.clone());
        r.register("malformed", "Gossip messages dropped as malformed", metrics.malformed.clone());
        r.register("dropped", "Gossip messages dropped: inbound queue full", metrics.dropped.clone());
        r.register(
            "rate_limited",
            "Gossip messages dropped: the sending member exceeded gossip.max-messages-per-peer",
            metrics.rate_limited.clone(),
        );
        r.register("health_score", "Lifeguard local health score (0 healthy, up to 7)", metrics.health_score.clone());
        r.register(
            "coordinate_error",
            "This node's Vivaldi coordinate error estimate",
            metrics.coordinate_error.clone(),
        );
        r.register("events", "Constellation runtime events received, by kind", metrics.events.clone());
        r.register(
            "clock_offset_seconds",
            "The largest wall-clock offset measured to another member recently (signed: negative when this \
             node is ahead)",
            metrics.clock_offset.clone(),
        );
        r.register(
            "clock_fenced",
            "1 while this node's clock is beyond the tolerated offset from a majority of the members and it \
             serves nothing",
            metrics.clock_fenced.clone(),
        );
        Arc::new(metrics)
    }

    fn count(&self, direction: &'static str, transport: &'static str, bytes: usize) {
        let labels = TransportLabels { direction, transport };
        self.messages.get_or_create(&labels).inc();
        self.bytes.get_or_create(&labels).inc_by(bytes as u64);
    }
}

/// What the rest of the node asks of gossip.
enum Command {
    Members(oneshot::Sender<v1::MembersResponse>),
    Query { name: String, payload: Vec<u8>, timeout: Millis, reply: oneshot::Sender<v1::QueryResponse> },
    Leave(oneshot::Sender<()>),
}

/// The node's handle on its gossip task.
#[derive(Clone)]
pub struct Gossip {
    inbound: mpsc::Sender<Envelope>,
    /// Per sending node; an `--insecure` node, whose callers name no node, has none.
    rate_limit: Option<Arc<std::sync::Mutex<PeerRateLimit<NodeId>>>>,
    commands: mpsc::Sender<Command>,
    metrics: Arc<GossipMetrics>,
    last_malformed_log: Arc<AtomicU64>,
    started: Instant,
}

impl Gossip {
    /// Takes one QUIC datagram: the gossip service byte, then an envelope. `sender` is the node
    /// the connection's certificate names (`None` only on an `--insecure` node); an envelope
    /// claiming to come from anyone else is refused.
    pub fn receive_datagram(&self, datagram: Bytes, sender: Option<NodeId>) -> Result<(), String> {
        match datagram.split_first() {
            Some((&service, envelope)) if service == u8::from(Service::Gossip) => {
                self.receive(envelope, "datagram", sender)
            }
            _ => {
                self.malformed("datagram for no known service".into());
                Ok(())
            }
        }
    }

    /// Takes one envelope from a gossip-service stream; see [`Gossip::receive_datagram`].
    pub fn receive_streamed(&self, envelope: &[u8], sender: Option<NodeId>) -> Result<(), String> {
        self.receive(envelope, "stream", sender)
    }

    fn receive(&self, bytes: &[u8], transport: &'static str, sender: Option<NodeId>) -> Result<(), String> {
        self.metrics.count("in", transport, bytes.len());
        if let (Some(limit), Some(sender)) = (&self.rate_limit, sender) {
            let now = self.started.elapsed().as_millis() as Millis;
            if !limit.lock().unwrap_or_else(|p| p.into_inner()).allow(&sender, now) {
                self.metrics.rate_limited.inc();
                return Ok(());
            }
        }
        match codec::decode(bytes) {
            Ok(envelope) => {
                if let Some(sender) = sender.filter(|sender| *sender != envelope.from) {
                    return Err(format!("node {sender} sent gossip as node {}", envelope.from));
                }
                if self.inbound.try_send(envelope).is_err() {
                    self.metrics.dropped.inc();
                }
            }
            Err(e) => self.malformed(e.to_string()),
        }
        Ok(())
    }

    /// Counts a malformed message and logs it, at most once a second (a flood must not flood
    /// the log too).
    fn malformed(&self, detail: String) {
        self.metrics.malformed.inc();
        let second = self.started.elapsed().as_secs() + 1;
        if self.last_malformed_log.swap(second, Ordering::Relaxed) != second {
            warn!(%detail, total = self.metrics.malformed.get(), "dropped a malformed gossip message");
        }
    }

    pub async fn members(&self) -> Option<v1::MembersResponse> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Members(reply)).await.ok()?;
        answer.await.ok()
    }

    pub async fn query(&self, name: String, payload: Vec<u8>, timeout: Duration) -> Option<v1::QueryResponse> {
        let (reply, answer) = oneshot::channel();
        let timeout = timeout.as_millis() as Millis;
        self.commands.send(Command::Query { name, payload, timeout, reply }).await.ok()?;
        answer.await.ok()
    }

    /// Announces a graceful leave and waits (a bounded while) for it to spread.
    pub async fn leave(&self) {
        let (reply, answer) = oneshot::channel();
        if self.commands.send(Command::Leave(reply)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), answer).await;
        }
    }
}

pub struct GossipSettings {
    pub node_id: NodeId,
    pub advertise: String,
    pub swim: SwimConfig,
    pub seeds: Vec<String>,
    pub tags: Tags,
    /// Messages a second one member may send this node, on average (bursts of twice that).
    pub max_messages_per_peer: Option<u32>,
}

/// Members whose rate is tracked at once; idle ones are forgotten past it.
const RATE_LIMITED_PEERS: usize = 8_192;

/// Starts the gossip task; it runs until the returned handle's task is aborted.
pub fn start(
    mut settings: GossipSettings,
    peers: Arc<Peers>,
    ranges: Arc<Ranges>,
    clock: Arc<Hlc>,
    metrics: Arc<GossipMetrics>,
) -> (Gossip, tokio::task::JoinHandle<()>) {
    // A node is no seed of its own: a constellation of one has none and asks no one.
    let advertise = settings.advertise.clone();
    settings.seeds.retain(|seed| *seed != advertise);
    let (inbound_tx, inbound) = mpsc::channel(INBOUND_QUEUE);
    let (commands_tx, commands) = mpsc::channel(64);
    let started = Instant::now();
    let gossip = Gossip {
        inbound: inbound_tx,
        rate_limit: settings.max_messages_per_peer.map(|rate| {
            Arc::new(std::sync::Mutex::new(PeerRateLimit::new(rate, rate.saturating_mul(2), RATE_LIMITED_PEERS)))
        }),
        commands: commands_tx,
        metrics: metrics.clone(),
        last_malformed_log: Arc::new(AtomicU64::new(0)),
        started,
    };
    let shell = Shell {
        swim: Swim::new(settings.swim.clone(), settings.node_id, settings.advertise.clone(), 0, settings.node_id),
        settings,
        peers,
        ranges,
        clock,
        metrics,
        started,
        queries: HashMap::new(),
        leaving: None,
        counted: Default::default(),
        exported_at: Instant::now(),
    };
    (gossip, tokio::spawn(shell.run(inbound, commands)))
}

struct PendingQuery {
    reply: oneshot::Sender<v1::QueryResponse>,
    expected: u32,
}

struct Shell {
    swim: Swim,
    settings: GossipSettings,
    peers: Arc<Peers>,
    ranges: Arc<Ranges>,
    /// The node's clock: its physical reading goes into acks, and it is fenced while the
    /// offsets measured say it is too far off.
    clock: Arc<Hlc>,
    metrics: Arc<GossipMetrics>,
    started: Instant,
    queries: HashMap<u64, PendingQuery>,
    leaving: Option<(u64, oneshot::Sender<()>)>,
    counted: crate::gossip::swim::Stats,
    exported_at: Instant,
}

impl Shell {
    /// The core's time in milliseconds; its microseconds go along for round-trip measurement.
    fn now(&mut self) -> Millis {
        let elapsed = self.started.elapsed();
        self.swim.set_clock_micros(elapsed.as_micros() as u64);
        self.swim.set_wall_nanos(self.clock.physical_now());
        elapsed.as_millis() as Millis
    }

    async fn run(mut self, mut inbound: mpsc::Receiver<Envelope>, mut commands: mpsc::Receiver<Command>) {
        let wall_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        self.swim.start_lamport_at(wall_ms as u64);
        let tags = self.tags();
        let now = self.now();
        self.swim.set_tags(tags, false, now);
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_join = Instant::now();
        let mut next_tags = Instant::now() + Duration::from_secs(10);
        let mut next_describe = Instant::now();
        let mut next_clock_check = Instant::now() + CLOCK_CHECK;
        let mut join_attempt = 0u32;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = self.now();
                    self.swim.tick(now);
                    if Instant::now() >= next_join && self.swim.live_count() <= 1 && !self.settings.seeds.is_empty() {
                        join_attempt += 1;
                        self.join_seeds(join_attempt);
                        next_join = Instant::now() + Duration::from_secs(u64::from(join_attempt.min(5)));
                    }
                    if Instant::now() >= next_describe {
                        next_describe = Instant::now() + Duration::from_secs(2);
                        self.describe_members();
                    }
                    if Instant::now() >= next_clock_check {
                        next_clock_check = Instant::now() + CLOCK_CHECK;
                        self.judge_clock(now);
                    }
                    if Instant::now() >= next_tags {
                        // Often enough that a decommissioning is known before the next planner
                        // round; a tag update is sent only when something changed.
                        next_tags = Instant::now() + Duration::from_secs(2);
                        let tags = self.tags();
                        if self.swim.tags_of(self.settings.node_id) != Some(&tags) {
                            self.swim.set_tags(tags, false, now);
                        }
                    }
                }
                Some(envelope) = inbound.recv() => {
                    let now = self.now();
                    self.swim.handle(now, envelope);
                }
                Some(command) = commands.recv() => self.command(command),
            }
            self.flush();
        }
    }

    /// Fences the node's clock while it is too far from a majority of the members measured, and
    /// frees it when it is back (CockroachDB ends the process instead; a fenced node keeps its
    /// replicas and rejoins service as soon as its clock is corrected).
    fn judge_clock(&self, now: Millis) {
        let tolerated = self.clock.max_offset().mul_f64(TOLERATED_SHARE_OF_MAX_OFFSET);
        let offsets = self.swim.clock_offsets();
        let largest = offsets.recent(now).map(|(_, offset)| offset.nanos).max_by_key(|nanos| nanos.unsigned_abs());
        self.metrics.clock_offset.set(largest.unwrap_or(0) as f64 / 1e9);
        let reason = offsets.verdict(now, tolerated).fence_reason(tolerated);
        match (&reason, self.clock.fenced()) {
            (Some(why), None) => error!(%why, "fencing this node: its clock is too far from the other members'"),
            (None, Some(_)) => info!("this node's clock is back within the tolerated offset: it serves again"),
            _ => {}
        }
        self.metrics.clock_fenced.set(i64::from(reason.is_some()));
        self.clock.set_fence(reason);
    }

    /// Tells the range layer every member's failure domain and coordinate, for placement.
    fn describe_members(&self) {
        let me = self.settings.node_id;
        let ids: Vec<NodeId> = self.swim.members().map(|m| m.id).chain(std::iter::once(me)).collect();
        for id in ids {
            let coordinate =
                if id == me { Some(self.swim.coordinate().clone()) } else { self.swim.coordinate_of(id).cloned() };
            self.ranges.members.describe(id, self.swim.tags_of(id), coordinate);
        }
    }

    /// This node's tags: the configured ones plus its version and the replicas it holds, and
    /// the zone and region it learned at run time where the configuration names none.
    fn tags(&self) -> Tags {
        let mut tags = self.settings.tags.clone();
        let learned = self.ranges.members.learned_topology();
        for (name, value) in [("zone", learned.zone), ("region", learned.region)] {
            if !value.is_empty() {
                tags.entry(name.into()).or_insert(value);
            }
        }
        tags.insert("version".into(), env!("CARGO_PKG_VERSION").into());
        tags.insert("ranges".into(), self.ranges.store.hosted().len().to_string());
        if self.ranges.is_decommissioning() {
            tags.insert(crate::range::members::DECOMMISSIONING_TAG.into(), "true".into());
        }
        tags
    }

    /// Asks every seed for its state; `dial` resolves names afresh each time.
    fn join_seeds(&mut self, attempt: u32) {
        let now = self.now();
        if attempt > 1 {
            info!(attempt, seeds = ?self.settings.seeds, "not joined yet; asking the seeds again");
        }
        for seed in self.settings.seeds.clone() {
            self.swim.join(&seed, now);
        }
    }

    fn command(&mut self, command: Command) {
        let now = self.now();
        match command {
            Command::Members(reply) => {
                let _ = reply.send(self.members());
            }
            Command::Query { name, payload, timeout, reply } => {
                let expected = self.swim.live_count() as u32;
                let ltime = self.swim.query(name, payload, timeout, now);
                self.queries.insert(ltime, PendingQuery { reply, expected });
            }
            Command::Leave(reply) => {
                self.swim.leave(now);
                self.leaving = Some((self.swim.lamport_time(), reply));
            }
        }
    }

    fn members(&self) -> v1::MembersResponse {
        let nearest: HashMap<NodeId, Duration> = self.swim.nearest(usize::MAX).into_iter().collect();
        let coordinate = self.swim.coordinate();
        let members = self
            .swim
            .members()
            .map(|m| {
                let peer = self.swim.coordinate_of(m.id);
                v1::GossipMemberStatus {
                    node_id: m.id,
                    addr: m.addr.clone(),
                    state: state_name(m.state).into(),
                    incarnation: m.incarnation,
                    tags: self.swim.tags_of(m.id).map(|t| t.clone().into_iter().collect()).unwrap_or_default(),
                    coordinate: peer.map(|c| c.vec.clone()).unwrap_or_default(),
                    coordinate_error: peer.map(|c| c.error).unwrap_or_default(),
                    rtt_estimate_us: nearest.get(&m.id).map(|d| d.as_micros() as u64).unwrap_or_default(),
                }
            })
            .collect();
        v1::MembersResponse {
            node_id: self.settings.node_id,
            incarnation: self.swim.incarnation(),
            health_score: self.swim.health(),
            coordinate: coordinate.vec.clone(),
            coordinate_error: coordinate.error,
            members,
            lamport_time: self.swim.lamport_time(),
        }
    }

    /// Carries out what the core produced.
    fn flush(&mut self) {
        for output in self.swim.drain() {
            match output {
                Output::Send { to, envelope } => self.send(to, &envelope),
                Output::Event(event) => self.event(event),
            }
        }
        // Counting members by state walks the whole table: once a second is enough.
        if self.exported_at.elapsed() >= Duration::from_secs(1) {
            self.exported_at = Instant::now();
            self.export();
        }
    }

    fn send(&self, to: String, envelope: &Envelope) {
        // Answers, acknowledgements and state syncs are sent once and matter: a stream
        // delivers them or says it could not. Probes and gossip tolerate loss by design.
        let reliable =
            matches!(envelope.message, Message::Answer { .. } | Message::CreAck { .. } | Message::Sync { .. });
        let encoded = codec::encode(envelope);
        let peers = self.peers.clone();
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            if let Err(e) = deliver(&peers, &metrics, &to, encoded, reliable).await {
                debug!(%to, error = %e, "gossip message not delivered");
            }
        });
    }

    fn event(&mut self, event: Event) {
        match event {
            Event::Joined(id) => {
                let addr = self.swim.member(id).map(|m| m.addr.clone()).unwrap_or_default();
                info!(node_id = id, %addr, "member joined");
                self.ranges.members.alive(id, addr);
                self.describe_members();
            }
            Event::Recovered(id) => {
                info!(node_id = id, "suspected member proved alive");
            }
            Event::Revived(id) => {
                let addr = self.swim.member(id).map(|m| m.addr.clone()).unwrap_or_default();
                warn!(node_id = id, "member declared dead proved alive (a false positive)");
                self.metrics.false_positives.inc();
                self.ranges.members.alive(id, addr);
            }
            Event::Suspected(id) => {
                info!(node_id = id, "member suspected");
                self.metrics.suspicions.inc();
            }
            Event::Failed(id) => {
                warn!(node_id = id, "member declared dead");
                self.ranges.member_failed(id);
            }
            Event::Left(id) => {
                info!(node_id = id, "member left");
                self.ranges.member_failed(id);
            }
            Event::Refuted { incarnation } => {
                warn!(incarnation, "this node was suspected; refuted with a higher incarnation");
                self.metrics.refutations.inc();
            }
            Event::Cre(cre) => self.runtime_event(cre),
            Event::Settled { ltime, settled } => {
                debug!(ltime, ?settled, "runtime event settled");
                if self.leaving.as_ref().is_some_and(|(at, _)| *at == ltime) {
                    if let Some((_, reply)) = self.leaving.take() {
                        let _ = reply.send(());
                    }
                }
            }
            Event::QueryDone { ltime, answers } => {
                if let Some(query) = self.queries.remove(&ltime) {
                    let _ = query.reply.send(self.query_response(answers, query.expected));
                }
            }
        }
    }

    fn runtime_event(&mut self, cre: Cre) {
        self.metrics.events.get_or_create(&KindLabels { kind: cre.kind.name() }).inc();
        let CreKind::Query { name, .. } = &cre.kind else {
            debug!(origin = cre.origin, ltime = cre.ltime, kind = cre.kind.name(), "runtime event");
            return;
        };
        // The built-in queries; any other name is acknowledged but not answered.
        let answer = match name.as_str() {
            "ping" => Some(self.settings.node_id.to_string()),
            "capacity" => Some(
                serde_json::json!({
                    "node_id": self.settings.node_id,
                    "replicas": self.ranges.store.hosted().len(),
                    "tags": self.swim.tags_of(self.settings.node_id),
                })
                .to_string(),
            ),
            _ => None,
        };
        if let Some(answer) = answer {
            self.swim.answer(&cre, answer.into_bytes());
        }
    }

    fn query_response(&self, answers: Vec<QueryAnswer>, expected: u32) -> v1::QueryResponse {
        let coordinate = self.swim.coordinate();
        let answers = answers
            .into_iter()
            .map(|a| v1::QueryAnswer {
                node_id: a.from,
                rtt_estimate_us: a
                    .coordinate
                    .filter(|c| c.is_valid() && c.vec.len() == coordinate.vec.len())
                    .map(|c| coordinate.distance_to(&c).as_micros() as u64)
                    .unwrap_or_default(),
                payload: a.payload,
            })
            .collect();
        v1::QueryResponse { answers, expected, error: String::new() }
    }

    /// Brings the metrics up to date with the core.
    fn export(&mut self) {
        let stats = self.swim.stats();
        self.metrics.probes.inc_by(stats.probes - self.counted.probes);
        self.metrics.probes_failed.inc_by(stats.probes_failed - self.counted.probes_failed);
        self.metrics.indirect_probes.inc_by(stats.indirect_probes - self.counted.indirect_probes);
        self.counted = stats;
        let mut by_state: HashMap<&'static str, i64> = HashMap::new();
        for member in self.swim.members() {
            *by_state.entry(state_name(member.state)).or_default() += 1;
        }
        for state in ["alive", "suspect", "dead", "left"] {
            self.metrics.members.get_or_create(&StateLabels { state }).set(by_state.get(state).copied().unwrap_or(0));
        }
        self.metrics.health_score.set(i64::from(self.swim.health()));
        self.metrics.coordinate_error.set(self.swim.coordinate().error);
    }
}

pub fn state_name(state: State) -> &'static str {
    match state {
        State::Alive => "alive",
        State::Suspect => "suspect",
        State::Dead => "dead",
        State::Left => "left",
    }
}

/// Sends one encoded envelope to `to`: as a datagram when it fits and may be lost, else on a
/// stream.
async fn deliver(
    peers: &Peers,
    metrics: &GossipMetrics,
    to: &str,
    envelope: Vec<u8>,
    reliable: bool,
) -> Result<(), String> {
    let connection = peers.connection(to).await?;
    let fits = connection.max_datagram_size().is_some_and(|max| envelope.len() < max);
    if fits && !reliable {
        let mut datagram = BytesMut::with_capacity(envelope.len() + 1);
        datagram.put_u8(u8::from(Service::Gossip));
        datagram.put_slice(&envelope);
        let size = datagram.len();
        match connection.send_datagram(datagram.freeze()) {
            Ok(()) => {
                metrics.count("out", "datagram", size);
                return Ok(());
            }
            Err(quinn::SendDatagramError::ConnectionLost(e)) => {
                peers.forget(to, &connection).await;
                return Err(e.to_string());
            }
            // Too large after all (the path shrank): the stream below carries it.
            Err(e) => debug!(%to, error = %e, "datagram refused; using a stream"),
        }
    }
    let size = envelope.len();
    let mut stream = match PwpStream::open(&connection, Service::Gossip, STREAM_TIMEOUT).await {
        Ok(stream) => stream,
        Err(e) => {
            // A lost connection is dropped so the next message redials; a slow peer's is kept
            // (raft shares it).
            if matches!(e, crate::transport::stream::ClientError::Connection(_)) {
                peers.forget(to, &connection).await;
            }
            return Err(e.to_string());
        }
    };
    let (kind, _) =
        stream.call(payload_type::gossip::ENVELOPE, Bytes::from(envelope)).await.map_err(|e| e.to_string())?;
    if kind != payload_type::gossip::RECEIVED {
        return Err(format!("answer of payload type {kind:#04x}"));
    }
    metrics.count("out", "stream", size);
    Ok(())
}
