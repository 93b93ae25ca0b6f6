use super::*;
use rand::rngs::SmallRng;
use rand::SeedableRng;

fn ms(millis: f64) -> Duration {
    Duration::from_secs_f64(millis / 1000.0)
}

#[test]
fn a_fresh_coordinate_sits_at_the_origin_with_maximal_error() {
    let config = VivaldiConfig::default();
    let node = Vivaldi::new(config.clone(), 1);
    assert_eq!(node.coordinate().vec, vec![0.0; 8]);
    assert_eq!(node.coordinate().error, 1.5);
    assert_eq!(node.coordinate().height, config.height_min);
}

#[test]
fn two_nodes_learn_the_round_trip_between_them() {
    let mut a = Vivaldi::new(VivaldiConfig::default(), 1);
    let mut b = Vivaldi::new(VivaldiConfig::default(), 2);
    for _ in 0..200 {
        let b_now = b.coordinate().clone();
        a.observe(2, &b_now, ms(20.0)).unwrap();
        let a_now = a.coordinate().clone();
        b.observe(1, &a_now, ms(20.0)).unwrap();
    }
    let estimate = a.coordinate().distance_to(b.coordinate()).as_secs_f64() * 1000.0;
    assert!((estimate - 20.0).abs() < 2.0, "estimated {estimate} ms for 20 ms");
    assert!(a.coordinate().error < 0.2, "error stayed at {}", a.coordinate().error);
    assert_eq!(a.coordinate().distance_to(b.coordinate()), b.coordinate().distance_to(a.coordinate()));
}

#[test]
fn the_median_of_three_filters_a_spike() {
    let mut node = Vivaldi::new(VivaldiConfig::default(), 1);
    assert_eq!(node.filtered_latency(9, 0.010), 0.010);
    assert_eq!(node.filtered_latency(9, 1.000), 1.000);
    assert_eq!(node.filtered_latency(9, 0.012), 0.012, "the spike is not the median");
    assert_eq!(node.filtered_latency(9, 0.011), 0.012, "the window keeps the last three");
    assert_eq!(node.filtered_latency(7, 0.5), 0.5, "per peer");
}

#[test]
fn bad_peer_coordinates_and_round_trips_change_nothing() {
    let mut node = Vivaldi::new(VivaldiConfig::default(), 1);
    let before = node.coordinate().clone();
    let mut peer = Coordinate::origin(&VivaldiConfig::default());
    peer.vec.pop();
    assert_eq!(node.observe(2, &peer, ms(5.0)).unwrap_err(), CoordinateError::Dimensions { expected: 8, got: 7 });
    let mut peer = Coordinate::origin(&VivaldiConfig::default());
    peer.vec[3] = f64::NAN;
    assert_eq!(node.observe(2, &peer, ms(5.0)).unwrap_err(), CoordinateError::NotFinite);
    peer.vec[3] = 0.0;
    peer.height = f64::INFINITY;
    assert_eq!(node.observe(2, &peer, ms(5.0)).unwrap_err(), CoordinateError::NotFinite);
    let sane = Coordinate::origin(&VivaldiConfig::default());
    assert!(matches!(node.observe(2, &sane, Duration::from_secs(11)), Err(CoordinateError::Rtt(_))));
    assert_eq!(node.coordinate(), &before);
}

#[test]
fn a_coordinate_driven_to_infinity_starts_over() {
    let mut node = Vivaldi::new(VivaldiConfig::default(), 1);
    let mut far = Coordinate::origin(&VivaldiConfig::default());
    far.vec = vec![1.0e300; 8];
    node.observe(2, &far, ms(5.0)).unwrap();
    assert_eq!(node.resets(), 1);
    assert_eq!(node.coordinate(), &Coordinate::origin(&VivaldiConfig::default()));
    assert_eq!(node.coordinate().distance_to(&far), Duration::MAX, "too far to express saturates");
}

#[test]
fn coinciding_nodes_push_apart_the_same_way_for_the_same_seed() {
    let run = |seed| {
        let mut a = Vivaldi::new(VivaldiConfig::default(), seed);
        let origin = Coordinate::origin(&VivaldiConfig::default());
        a.observe(2, &origin, ms(10.0)).unwrap().vec.clone()
    };
    assert_ne!(run(1), vec![0.0; 8], "a random direction, not none");
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}

#[test]
fn nearest_ranks_by_estimated_round_trip() {
    let config = VivaldiConfig { dimensions: 2, ..Default::default() };
    let at = |x: f64| Coordinate { vec: vec![x, 0.0], error: 0.1, adjustment: 0.0, height: config.height_min };
    let me = at(0.0);
    let others = [(1, at(0.030)), (2, at(0.010)), (3, at(0.020)), (4, at(0.010))];
    let ranked = nearest(&me, others.iter().map(|(id, c)| (*id, c)), 3);
    let ids: Vec<u64> = ranked.iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, [2, 4, 3], "ties by node id");
}

#[test]
fn estimates_on_a_metric_latency_space_are_within_fifteen_percent_at_the_median() {
    let errors = simulate_plane(200, 150, 42);
    let median = errors[errors.len() / 2];
    let p90 = errors[errors.len() * 9 / 10];
    assert!(median < 0.15, "median relative error {median:.3}, p90 {p90:.3}");
}

/// Nodes on a plane with access latencies: round trip = distance + both heights, a metric that
/// respects the triangle inequality. Each round every node probes a random other node.
/// Returns the relative errors of the estimates over every pair, sorted.
pub fn simulate_plane(nodes: usize, rounds: usize, seed: u64) -> Vec<f64> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let places: Vec<Place> = (0..nodes).map(|_| Place::random(&mut rng)).collect();
    let rtt = |i: usize, j: usize| places[i].rtt(&places[j]);
    let mut clients: Vec<Vivaldi> = (0..nodes).map(|i| Vivaldi::new(VivaldiConfig::default(), i as u64)).collect();
    for _ in 0..rounds {
        for i in 0..nodes {
            let j = (i + rng.random_range(1..nodes)) % nodes;
            // A few percent of jitter, as real probes see.
            let measured = rtt(i, j) * rng.random_range(0.97..1.03);
            let other = clients[j].coordinate().clone();
            clients[i].observe(j as u64, &other, Duration::from_secs_f64(measured)).unwrap();
        }
    }
    let mut errors = Vec::new();
    for i in 0..nodes {
        for j in (i + 1)..nodes {
            let estimate = clients[i].coordinate().distance_to(clients[j].coordinate()).as_secs_f64();
            errors.push((estimate - rtt(i, j)).abs() / rtt(i, j));
        }
    }
    errors.sort_by(f64::total_cmp);
    errors
}
