//! Vivaldi network coordinates with Serf's semantics (`hashicorp/serf/coordinate`): every probe
//! ack carries the peer's coordinate, and the measured round trip pulls this node's coordinate
//! towards where it should be. Distances between coordinates then estimate round-trip times
//! between any two nodes, so placement can prefer near nodes without measuring every pair.
//!
//! Sans-IO: no clock and no global randomness; the caller passes round-trip times, and the one
//! random choice (a direction when two coordinates coincide) comes from a seeded generator.

use std::collections::HashMap;
use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Below this, values count as zero (Serf's `zeroThreshold`).
const ZERO_THRESHOLD: f64 = 1.0e-6;
/// Round trips above this are measurement errors, not network distance.
pub const MAX_RTT: Duration = Duration::from_secs(10);

/// Tuning, with Serf's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct VivaldiConfig {
    pub dimensions: usize,
    /// Error estimate of a fresh coordinate, and its ceiling.
    pub error_max: f64,
    /// How fast the error estimate follows observed wrongness (c_e).
    pub ce: f64,
    /// How far one observation moves the coordinate (c_c).
    pub cc: f64,
    /// Observations averaged into the adjustment term (0 turns adjustment off).
    pub adjustment_window: usize,
    /// Smallest height, in seconds: the access-link latency every node has.
    pub height_min: f64,
    /// Round trips per peer whose median is used, filtering one-off spikes.
    pub latency_filter: usize,
    /// Pull towards the origin against drift of the whole constellation (rho, in seconds).
    pub gravity_rho: f64,
}

impl Default for VivaldiConfig {
    fn default() -> Self {
        VivaldiConfig {
            dimensions: 8,
            error_max: 1.5,
            ce: 0.25,
            cc: 0.25,
            adjustment_window: 20,
            height_min: 10.0e-6,
            latency_filter: 3,
            gravity_rho: 150.0,
        }
    }
}

/// A point in the latency space: a Euclidean part, a height (latency every path to the node
/// pays), an adjustment (a per-node correction learnt from residuals) and an error estimate.
#[derive(Debug, Clone, PartialEq)]
pub struct Coordinate {
    pub vec: Vec<f64>,
    pub error: f64,
    pub adjustment: f64,
    pub height: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CoordinateError {
    #[error("coordinate has {got} dimensions, expected {expected}")]
    Dimensions { expected: usize, got: usize },
    #[error("coordinate has a NaN or infinite component")]
    NotFinite,
    #[error("round trip time {0:?} is not between 0 and 10 s")]
    Rtt(Duration),
}

impl Coordinate {
    pub fn origin(config: &VivaldiConfig) -> Coordinate {
        Coordinate {
            vec: vec![0.0; config.dimensions],
            error: config.error_max,
            adjustment: 0.0,
            height: config.height_min,
        }
    }

    pub fn is_valid(&self) -> bool {
        self.vec.iter().all(|c| c.is_finite())
            && self.error.is_finite()
            && self.adjustment.is_finite()
            && self.height.is_finite()
    }

    /// Estimated round trip to `other`, including both adjustments unless that would make it
    /// negative. Saturates for coordinates too far apart to express.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        Duration::try_from_secs_f64(self.distance_seconds(other).max(0.0)).unwrap_or(Duration::MAX)
    }

    fn distance_seconds(&self, other: &Coordinate) -> f64 {
        let raw = self.raw_distance_to(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        if adjusted > 0.0 {
            adjusted
        } else {
            raw
        }
    }

    fn raw_distance_to(&self, other: &Coordinate) -> f64 {
        magnitude(self.vec.iter().zip(&other.vec).map(|(a, b)| a - b)) + self.height + other.height
    }

    fn apply_force(&mut self, config: &VivaldiConfig, force: f64, other: &Coordinate, rng: &mut SmallRng) {
        let (unit, mag) = unit_vector_at(&self.vec, &other.vec, rng);
        for (component, direction) in self.vec.iter_mut().zip(&unit) {
            *component += direction * force;
        }
        if mag > ZERO_THRESHOLD {
            self.height = ((self.height + other.height) * force / mag + self.height).max(config.height_min);
        }
    }
}

fn magnitude(components: impl Iterator<Item = f64>) -> f64 {
    components.map(|c| c * c).sum::<f64>().sqrt()
}

/// The unit vector from `to` towards `from` and the distance between them; a random direction
/// when they coincide (so two nodes at the origin can push each other apart).
fn unit_vector_at(from: &[f64], to: &[f64], rng: &mut SmallRng) -> (Vec<f64>, f64) {
    let diff: Vec<f64> = from.iter().zip(to).map(|(a, b)| a - b).collect();
    let mag = magnitude(diff.iter().copied());
    if mag > ZERO_THRESHOLD {
        return (diff.iter().map(|c| c / mag).collect(), mag);
    }
    let random: Vec<f64> = (0..from.len()).map(|_| rng.random::<f64>() - 0.5).collect();
    let random_mag = magnitude(random.iter().copied());
    if random_mag > ZERO_THRESHOLD {
        return (random.iter().map(|c| c / random_mag).collect(), 0.0);
    }
    let mut axis = vec![0.0; from.len()];
    if let Some(first) = axis.first_mut() {
        *first = 1.0;
    }
    (axis, 0.0)
}

/// One node's coordinate and what it needs to keep improving it.
pub struct Vivaldi {
    config: VivaldiConfig,
    coordinate: Coordinate,
    origin: Coordinate,
    adjustment_samples: Vec<f64>,
    adjustment_index: usize,
    latency_samples: HashMap<u64, Vec<f64>>,
    rng: SmallRng,
    resets: u64,
}

impl Vivaldi {
    pub fn new(config: VivaldiConfig, seed: u64) -> Vivaldi {
        Vivaldi {
            coordinate: Coordinate::origin(&config),
            origin: Coordinate::origin(&config),
            adjustment_samples: vec![0.0; config.adjustment_window],
            adjustment_index: 0,
            latency_samples: HashMap::new(),
            rng: SmallRng::seed_from_u64(seed),
            resets: 0,
            config,
        }
    }

    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// Times the coordinate became invalid (NaN or infinite) and started over.
    pub fn resets(&self) -> u64 {
        self.resets
    }

    /// Forgets a peer's latency samples (it left the constellation).
    pub fn forget(&mut self, node: u64) {
        self.latency_samples.remove(&node);
    }

    /// Folds in one round trip to `node`, whose coordinate is `other`. A peer's coordinate of
    /// the wrong shape or with NaNs, or an impossible round trip, is refused and changes nothing.
    pub fn observe(&mut self, node: u64, other: &Coordinate, rtt: Duration) -> Result<&Coordinate, CoordinateError> {
        if other.vec.len() != self.config.dimensions {
            return Err(CoordinateError::Dimensions { expected: self.config.dimensions, got: other.vec.len() });
        }
        if !other.is_valid() {
            return Err(CoordinateError::NotFinite);
        }
        if rtt > MAX_RTT {
            return Err(CoordinateError::Rtt(rtt));
        }
        let rtt = self.filtered_latency(node, rtt.as_secs_f64());
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coordinate.is_valid() {
            self.resets += 1;
            self.coordinate = Coordinate::origin(&self.config);
        }
        Ok(&self.coordinate)
    }

    /// The median of the last few round trips to `node`.
    fn filtered_latency(&mut self, node: u64, rtt: f64) -> f64 {
        let samples = self.latency_samples.entry(node).or_default();
        samples.push(rtt);
        if samples.len() > self.config.latency_filter.max(1) {
            samples.remove(0);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let rtt = rtt.max(ZERO_THRESHOLD);
        let distance = self.coordinate.distance_seconds(other);
        let wrongness = (distance - rtt).abs() / rtt;
        let total_error = (self.coordinate.error + other.error).max(ZERO_THRESHOLD);
        let weight = self.coordinate.error / total_error;
        let ce = self.config.ce * weight;
        self.coordinate.error = (ce * wrongness + self.coordinate.error * (1.0 - ce)).min(self.config.error_max);
        let force = self.config.cc * weight * (rtt - distance);
        self.coordinate.apply_force(&self.config, force, other, &mut self.rng);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let window = self.adjustment_samples.len();
        if window == 0 {
            return;
        }
        // The raw distance: existing adjustments must not feed back into the new one.
        self.adjustment_samples[self.adjustment_index] = rtt - self.coordinate.raw_distance_to(other);
        self.adjustment_index = (self.adjustment_index + 1) % window;
        self.coordinate.adjustment = self.adjustment_samples.iter().sum::<f64>() / (2.0 * window as f64);
    }

    fn update_gravity(&mut self) {
        let distance = self.origin.distance_seconds(&self.coordinate);
        let force = -(distance / self.config.gravity_rho).powi(2);
        let origin = self.origin.clone();
        self.coordinate.apply_force(&self.config, force, &origin, &mut self.rng);
    }
}

/// The `k` nodes nearest to `from` by estimated round trip, nearest first.
pub fn nearest<'a>(
    from: &Coordinate,
    candidates: impl IntoIterator<Item = (u64, &'a Coordinate)>,
    k: usize,
) -> Vec<(u64, Duration)> {
    let mut by_distance: Vec<(u64, Duration)> =
        candidates.into_iter().map(|(node, coordinate)| (node, from.distance_to(coordinate))).collect();
    by_distance.sort_by_key(|&(node, distance)| (distance, node));
    by_distance.truncate(k);
    by_distance
}

/// A node on a 100 ms square with an access latency of 0.5 to 5 ms (seconds).
#[derive(Debug, Clone, Copy)]
pub struct Place {
    pub x: f64,
    pub y: f64,
    pub height: f64,
}

impl Place {
    pub fn random(rng: &mut impl Rng) -> Place {
        Place {
            x: rng.random_range(0.0..0.100),
            y: rng.random_range(0.0..0.100),
            height: rng.random_range(0.0005..0.005),
        }
    }

    /// Round trip in seconds: distance plus both access latencies (a metric).
    pub fn rtt(&self, other: &Place) -> f64 {
        ((self.x - other.x).powi(2) + (self.y - other.y).powi(2)).sqrt() + self.height + other.height
    }
}

#[cfg(test)]
mod tests;
