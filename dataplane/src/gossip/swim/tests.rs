use super::*;
use crate::gossip::events::{Cre, CreKind, Settled, Tags};
use crate::gossip::report::false_failures;
use crate::gossip::sim::{addr, Sim};

fn node(id: NodeId) -> Swim {
    Swim::new(SwimConfig::lan(), id, addr(id), 0, id)
}

fn sends(outputs: &[Output]) -> Vec<(String, Envelope)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Send { to, envelope } => Some((to.clone(), envelope.clone())),
            Output::Event(_) => None,
        })
        .collect()
}

fn events(outputs: &[Output]) -> Vec<Event> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::Event(e) => Some(e.clone()),
            Output::Send { .. } => None,
        })
        .collect()
}

fn alive(id: NodeId) -> Update {
    Update::Alive { id, incarnation: 0, addr: addr(id) }
}

/// A node that knows `others` as alive members.
fn with_members(id: NodeId, others: &[NodeId]) -> Swim {
    let mut swim = node(id);
    for other in others {
        swim.apply(alive(*other), 0);
    }
    swim.drain();
    swim
}

#[test]
fn a_probe_is_answered_and_the_ack_closes_it() {
    let mut a = with_members(1, &[2]);
    let mut b = with_members(2, &[1]);
    a.tick(1_000);
    let (to, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    assert_eq!(to, "n2");
    b.handle(1_001, ping);
    let (to, ack) = sends(&b.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ack { .. })).unwrap();
    assert_eq!(to, "n1");
    assert!(matches!(&ack.message, Message::Ack { coordinate: Some(c), .. } if c == b.coordinate()));
    a.handle(1_040, ack);
    a.tick(2_000);
    assert_eq!(a.member(2).unwrap().state, State::Alive);
    assert!(events(&a.drain()).is_empty());
    // The 40 ms round trip moved a's coordinate away from b's (both started at the origin).
    assert!(a.coordinate().distance_to(b.coordinate()) > std::time::Duration::ZERO);
    assert_eq!(a.rejected_coordinates(), 0);
}

#[test]
fn a_direct_ack_carries_the_wall_clock_and_measures_the_offset_a_relayed_one_does_not() {
    const SECOND: u64 = 1_000_000_000;
    let (mut a, mut b, mut relay) = (with_members(1, &[2, 3]), with_members(2, &[1, 3]), with_members(3, &[1, 2]));
    // b's clock runs 2 s ahead of a's; the round trip is 40 ms.
    a.set_wall_nanos(100 * SECOND);
    a.tick(1_000);
    let (to, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    let target = if to == "n2" { &mut b } else { &mut relay };
    target.set_wall_nanos(102 * SECOND + 20_000_000);
    target.handle(1_020, ping);
    let (_, ack) = sends(&target.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ack { .. })).unwrap();
    assert!(matches!(ack.message, Message::Ack { wall_nanos: Some(_), .. }));
    a.set_wall_nanos(100 * SECOND + 40_000_000);
    a.handle(1_040, ack);
    let measured: Vec<_> = a.clock_offsets().recent(1_040).collect();
    assert_eq!(measured.len(), 1);
    assert_eq!(measured[0].1.nanos, 2 * SECOND as i64);
    assert_eq!(measured[0].1.uncertainty_nanos, 20_000_000);

    // A relay answers with its own ack, without its clock: the path it timed is not direct.
    let mut relay = with_members(3, &[1, 2]);
    relay.set_wall_nanos(500 * SECOND);
    let ping_req = Message::PingReq { seq: 9, target: 2, target_addr: addr(2) };
    relay.handle(2_000, Envelope { from: 1, from_addr: addr(1), message: ping_req, updates: vec![] });
    let (_, ping) = sends(&relay.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    let Message::Ping { seq, .. } = ping.message else { unreachable!() };
    let ack = Message::Ack { seq, coordinate: None, wall_nanos: Some(501 * SECOND) };
    relay.handle(2_010, Envelope { from: 2, from_addr: addr(2), message: ack, updates: vec![] });
    let (_, relayed) =
        sends(&relay.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ack { .. })).unwrap();
    assert!(matches!(relayed.message, Message::Ack { seq: 9, wall_nanos: None, .. }));
}

#[test]
fn a_peer_coordinate_that_makes_no_sense_is_counted_and_ignored() {
    let mut a = with_members(1, &[2]);
    a.tick(1_000);
    let (_, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    let Message::Ping { seq, .. } = ping.message else { unreachable!() };
    let mut broken = a.coordinate().clone();
    broken.vec[0] = f64::NAN;
    let before = a.coordinate().clone();
    let ack = Message::Ack { seq, coordinate: Some(broken), wall_nanos: None };
    a.handle(1_010, Envelope { from: 2, from_addr: addr(2), message: ack, updates: vec![] });
    assert_eq!(a.rejected_coordinates(), 1);
    assert_eq!(a.coordinate(), &before);
    a.tick(2_000);
    assert_eq!(a.member(2).unwrap().state, State::Alive, "the ack itself still counts");
}

#[test]
fn an_unanswered_probe_goes_indirect_then_suspects() {
    let mut a = with_members(1, &[2, 3, 4, 5]);
    a.tick(1_000);
    let ping = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    let Message::Ping { target, .. } = ping.1.message else { unreachable!() };
    a.tick(1_499);
    assert!(sends(&a.drain()).iter().all(|(_, e)| !matches!(e.message, Message::PingReq { .. })));
    a.tick(1_500);
    let requests: Vec<_> =
        sends(&a.drain()).into_iter().filter(|(_, e)| matches!(e.message, Message::PingReq { .. })).collect();
    assert_eq!(requests.len(), 3, "indirect_checks helpers");
    assert!(requests.iter().all(|(to, _)| *to != addr(target)));
    a.tick(2_000);
    assert_eq!(a.member(target).unwrap().state, State::Suspect);
    assert!(events(&a.drain()).contains(&Event::Suspected(target)));
}

#[test]
fn an_indirect_prober_relays_the_ack_or_sends_a_nack() {
    let mut helper = with_members(3, &[1, 2]);
    let request = Envelope {
        from: 1,
        from_addr: addr(1),
        message: Message::PingReq { seq: 77, target: 2, target_addr: addr(2) },
        updates: vec![],
    };
    helper.handle(0, request.clone());
    let (to, ping) = sends(&helper.drain()).pop().unwrap();
    assert_eq!(to, "n2");
    let Message::Ping { seq, .. } = ping.message else { panic!("{ping:?}") };
    helper.handle(
        10,
        Envelope {
            from: 2,
            from_addr: addr(2),
            message: Message::Ack { seq, coordinate: None, wall_nanos: None },
            updates: vec![],
        },
    );
    let (to, ack) = sends(&helper.drain()).pop().unwrap();
    assert_eq!(
        (to.as_str(), ack.message),
        ("n1", Message::Ack { seq: 77, coordinate: None, wall_nanos: None }),
        "no coordinate when relaying"
    );

    // No answer this time: a nack after the probe timeout.
    helper.handle(1_000, request);
    helper.drain();
    helper.tick(1_500);
    let nack = sends(&helper.drain()).into_iter().find(|(_, e)| e.message == Message::Nack { seq: 77 });
    assert!(nack.is_some_and(|(to, _)| to == "n1"));
}

#[test]
fn a_suspicion_about_oneself_is_refuted_with_a_higher_incarnation() {
    let mut a = with_members(1, &[2]);
    a.apply(Update::Suspect { id: 1, incarnation: 0, from: 2 }, 5);
    assert_eq!(a.incarnation(), 1);
    assert_eq!(a.health(), 1, "being suspected hints at our own slowness");
    assert!(events(&a.drain()).contains(&Event::Refuted { incarnation: 1 }));
    a.tick(200);
    let gossip = sends(&a.drain());
    assert!(gossip.iter().any(|(_, e)| e.updates.contains(&Update::Alive { id: 1, incarnation: 1, addr: addr(1) })));
    // Stale claims about an older incarnation are ignored.
    a.apply(Update::Dead { id: 1, incarnation: 0, from: 2 }, 6);
    assert_eq!(a.incarnation(), 1);
}

#[test]
fn claims_follow_incarnation_precedence() {
    let mut a = with_members(1, &[2]);
    a.apply(Update::Suspect { id: 2, incarnation: 3, from: 5 }, 10);
    assert_eq!(a.member(2).unwrap().state, State::Suspect);
    a.apply(Update::Alive { id: 2, incarnation: 3, addr: addr(2) }, 11);
    assert_eq!(a.member(2).unwrap().state, State::Suspect, "alive must beat the suspicion's incarnation");
    a.apply(Update::Alive { id: 2, incarnation: 4, addr: addr(2) }, 12);
    assert_eq!(a.member(2).unwrap().state, State::Alive);
    assert!(events(&a.drain()).contains(&Event::Recovered(2)));
    a.apply(Update::Suspect { id: 2, incarnation: 3, from: 5 }, 13);
    assert_eq!(a.member(2).unwrap().state, State::Alive, "an old suspicion is ignored");
    a.apply(Update::Dead { id: 2, incarnation: 4, from: 5 }, 14);
    assert_eq!(a.member(2).unwrap().state, State::Dead);
    a.apply(Update::Alive { id: 2, incarnation: 5, addr: addr(2) }, 15);
    assert_eq!(a.member(2).unwrap().state, State::Alive, "it may come back with a higher incarnation");
    assert!(events(&a.drain()).contains(&Event::Revived(2)));
}

#[test]
fn suspicion_timeouts_shrink_with_independent_confirmations() {
    let others: Vec<NodeId> = (2..=10).collect();
    let mut a = with_members(1, &others);
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 3 }, 0);
    // n = 10 alive: min = 4 * log10(10) * 1 s = 4 s, max = 6 * min, k = 4 - 2 = 2.
    assert_eq!(a.suspicions[&2].timeout(), 24_000);
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 4 }, 1);
    assert_eq!(a.suspicions[&2].timeout(), 11_381);
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 4 }, 2);
    assert_eq!(a.suspicions[&2].timeout(), 11_381, "the same confirmer counts once");
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 5 }, 3);
    assert_eq!(a.suspicions[&2].timeout(), 4_000);
    a.tick(3_999);
    assert_eq!(a.member(2).unwrap().state, State::Suspect);
    a.tick(4_000);
    assert_eq!(a.member(2).unwrap().state, State::Dead);
    assert!(events(&a.drain()).contains(&Event::Failed(2)));

    let mut plain = Swim::new(SwimConfig { lifeguard: false, ..SwimConfig::lan() }, 1, addr(1), 0, 1);
    for other in &others {
        plain.apply(alive(*other), 0);
    }
    plain.apply(Update::Suspect { id: 2, incarnation: 0, from: 3 }, 0);
    assert_eq!(plain.suspicions[&2].timeout(), 4_000, "plain SWIM: a fixed timeout");
}

#[test]
fn a_probed_suspect_hears_the_suspicion_at_once() {
    let mut a = with_members(1, &[2]);
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 9 }, 0);
    a.drain();
    a.tick(1_000);
    let (_, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    assert_eq!(ping.updates[0], Update::Suspect { id: 2, incarnation: 0, from: 1 }, "the buddy system");
}

#[test]
fn local_health_stretches_probes_and_recovers_with_acks() {
    let mut a = with_members(1, &[2]);
    a.tick(1_000);
    a.drain();
    // Nobody answered and there was no helper to ask: that counts against our own health,
    // and the next probe (of the now suspect node 2) waits twice as long.
    a.tick(2_000);
    assert_eq!(a.health(), 1);
    assert_eq!(a.next_probe_at, 2_000 + 2 * SwimConfig::lan().probe_interval);
    let (_, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
    let Message::Ping { seq, .. } = ping.message else { unreachable!() };
    a.handle(
        2_010,
        Envelope {
            from: 2,
            from_addr: addr(2),
            message: Message::Ack { seq, coordinate: None, wall_nanos: None },
            updates: vec![],
        },
    );
    assert_eq!(a.health(), 0, "an ack counts for it");

    let mut plain = Swim::new(SwimConfig { lifeguard: false, ..SwimConfig::lan() }, 1, addr(1), 0, 1);
    plain.apply(alive(2), 0);
    plain.tick(1_000);
    plain.tick(2_000);
    assert_eq!((plain.health(), plain.next_probe_at), (0, 3_000), "plain SWIM keeps its pace");
}

#[test]
fn dissemination_stops_after_the_retransmit_limit() {
    let others: Vec<NodeId> = (2..=10).collect();
    let mut a = with_members(1, &others);
    assert_eq!(a.retransmit_limit(), 4 * 2, "4 * ceil(log10(11))");
    a.apply(Update::Suspect { id: 2, incarnation: 0, from: 3 }, 0);
    let mut carried = 0;
    for round in 1..=20 {
        a.tick(round * 200);
        carried += sends(&a.drain())
            .iter()
            .filter(|(_, e)| e.updates.iter().any(|u| matches!(u, Update::Suspect { id: 2, .. })))
            .count();
    }
    assert_eq!(carried, 8);
}

#[test]
fn a_graceful_leave_is_not_a_failure() {
    let mut a = with_members(1, &[2]);
    let mut b = with_members(2, &[1]);
    b.leave(0);
    b.tick(200);
    for (_, envelope) in sends(&b.drain()) {
        a.handle(201, envelope);
    }
    assert_eq!(a.member(2).unwrap().state, State::Left);
    assert!(events(&a.drain()).contains(&Event::Left(2)));
}

#[test]
fn fifty_nodes_joining_through_one_seed_all_know_each_other() {
    let mut sim = Sim::new(50, SwimConfig::lan(), 7);
    for id in 2..=50 {
        sim.nodes.get_mut(&id).unwrap().join("n1", 0);
    }
    // Gossip spreads the joins; the first push-pull round (30 s) repairs what it missed.
    sim.run_until(40_000);
    for (id, swim) in &sim.nodes {
        assert_eq!(swim.live_count(), 50, "node {id} knows {} live members", swim.live_count());
    }
    let false_suspicions = sim.events.iter().filter(|(_, _, e)| matches!(e, Event::Suspected(_))).count();
    assert_eq!(false_suspicions, 0);
}

#[test]
fn a_crashed_node_is_declared_dead_by_everyone() {
    let mut sim = Sim::new(20, SwimConfig::lan(), 11);
    for id in 2..=20 {
        sim.nodes.get_mut(&id).unwrap().join("n1", 0);
    }
    sim.run_until(20_000);
    sim.crashed.insert(7);
    let crashed_at = sim.now;
    // Detection: a probe reaches it within a few intervals (round-robin), then the suspicion
    // times out (at most 6 * 4 * log10(20) s with no confirmation) and the death spreads.
    sim.run_until(crashed_at + 60_000);
    assert!(sim.views(7).iter().all(|v| *v == Some(State::Dead)), "{:?}", sim.views(7));
    let first_failure =
        sim.events.iter().find(|(_, _, e)| *e == Event::Failed(7)).map(|(at, _, _)| at - crashed_at).unwrap();
    assert!(first_failure <= 40_000, "declared dead after {first_failure} ms");
    let others_failed = sim.events.iter().filter(|(_, _, e)| matches!(e, Event::Failed(id) if *id != 7)).count();
    assert_eq!(others_failed, 0, "nobody else was declared dead");
}

#[test]
fn a_join_and_a_leave_reach_a_thousand_nodes() {
    let mut sim = Sim::meshed(1_000, SwimConfig::lan(), 3);
    sim.step = 20;
    sim.run_until(2_000);
    sim.join(1_001, SwimConfig::lan(), 1);
    let joined = sim.time_until_all_see(1_001, State::Alive, 30_000);
    // Serf's simulator: about 2.2 s to 99.99 % at this gossip interval and fanout.
    assert!(joined.is_some_and(|t| t <= 5_000), "join reached everyone after {joined:?} ms");

    sim.nodes.get_mut(&500).unwrap().leave(sim.now);
    let left = sim.time_until_all_see(500, State::Left, 30_000);
    assert!(left.is_some_and(|t| t <= 5_000), "leave reached everyone after {left:?} ms");
    assert_eq!(sim.false_failures(), 0);
}

#[test]
fn lifeguard_declares_far_fewer_healthy_nodes_dead_than_plain_swim() {
    // 100 nodes, 10 % loss, 10 of them handling everything 10 s late, so their probes of
    // healthy nodes time out and they accuse them.
    let swim = false_failures(false, 0.10, 5);
    let lifeguard = false_failures(true, 0.10, 5);
    assert!(swim >= 20, "the scenario must hurt plain SWIM: {swim} false failures");
    assert!(lifeguard * 5 <= swim, "Lifeguard {lifeguard} false failures, plain SWIM {swim}");
}

// Constellation runtime events.

fn settled(sim: &Sim, origin: NodeId, ltime: u64) -> Option<Settled> {
    sim.events.iter().find_map(|(_, id, e)| match e {
        Event::Settled { ltime: t, settled } if *id == origin && *t == ltime => Some(settled.clone()),
        _ => None,
    })
}

fn zone(zone: &str) -> Tags {
    Tags::from([("zone".to_string(), zone.to_string())])
}

#[test]
fn a_tag_update_reaches_every_node_once_and_settles_when_all_acknowledge() {
    let mut sim = Sim::meshed(50, SwimConfig::lan(), 21);
    let ltime = sim.nodes.get_mut(&7).unwrap().set_tags(zone("eu-1a"), true, sim.now);
    sim.run_until(5_000);
    for (id, swim) in &sim.nodes {
        assert_eq!(swim.tags_of(7), Some(&zone("eu-1a")), "node {id}");
    }
    let received: Vec<NodeId> = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::Cre(cre) if cre.origin == 7 && cre.ltime == ltime))
        .map(|(_, id, _)| *id)
        .collect();
    assert_eq!(received.len(), 49, "each other node handles the event exactly once: {received:?}");
    assert_eq!(settled(&sim, 7, ltime), Some(Settled::Acknowledged { acked: 49 }));
}

#[test]
fn tags_follow_lamport_time_not_arrival_order() {
    let mut a = with_members(1, &[2]);
    let update = |ltime, zone_name: &str| {
        Update::Cre(Cre { origin: 2, ltime, ack: false, kind: CreKind::Update { tags: zone(zone_name) } })
    };
    a.apply(update(9, "new"), 0);
    a.apply(update(4, "old"), 1);
    assert_eq!(a.tags_of(2), Some(&zone("new")), "a late, older update does not win");
    assert!(a.lamport_time() >= 9, "the clock witnessed the event");
    let raised = a.set_tags(zone("mine"), false, 2);
    assert!(raised > 9, "events raised afterwards are ordered after what was seen");
    let relayed = events(&a.drain()).iter().filter(|e| matches!(e, Event::Cre(_))).count();
    assert_eq!(relayed, 2, "both arrivals are events to the application, once each");
    a.apply(update(9, "new"), 3);
    assert!(events(&a.drain()).is_empty(), "a duplicate is dropped");
}

#[test]
fn an_event_without_acknowledgements_settles_by_rounds() {
    let mut sim = Sim::meshed(20, SwimConfig::lan(), 4);
    let ltime = sim.nodes.get_mut(&3).unwrap().set_tags(zone("us-2b"), false, sim.now);
    sim.run_until(10_000);
    assert_eq!(settled(&sim, 3, ltime), Some(Settled::Rounds));
    assert!(sim.nodes.values().all(|swim| swim.tags_of(3) == Some(&zone("us-2b"))));
}

#[test]
fn an_acknowledged_event_does_not_wait_for_a_member_that_died() {
    let mut sim = Sim::meshed(10, SwimConfig::lan(), 8);
    sim.crashed.insert(10);
    let ltime = sim.nodes.get_mut(&1).unwrap().set_tags(zone("a"), true, sim.now);
    sim.run_until(3_000);
    assert_eq!(settled(&sim, 1, ltime), None, "node 10 has not acknowledged and is not known dead yet");
    sim.run_until(60_000);
    // Declared dead before the 10 s deadline: it is no longer waited for.
    assert!(sim.views(10).iter().all(|v| *v == Some(State::Dead)));
    assert_eq!(settled(&sim, 1, ltime), Some(Settled::Acknowledged { acked: 8 }));
}

#[test]
fn an_acknowledged_event_settles_by_deadline_when_a_member_stays_silent() {
    let mut a = with_members(1, &[2, 3]);
    let ltime = a.set_tags(zone("a"), true, 0);
    a.handle(5, Envelope { from: 2, from_addr: addr(2), message: Message::CreAck { ltime }, updates: vec![] });
    a.tick(9_999);
    assert!(!events(&a.drain()).iter().any(|e| matches!(e, Event::Settled { .. })));
    a.tick(10_000);
    let settled = Event::Settled { ltime, settled: Settled::Deadline { acked: 1, expected: 2 } };
    assert!(events(&a.drain()).contains(&settled));
}

#[test]
fn a_query_collects_an_answer_from_every_living_node() {
    let mut sim = Sim::meshed(30, SwimConfig::lan(), 9);
    sim.crashed.insert(30);
    sim.run_until(30_000);
    assert!(sim.views(30).iter().all(|v| *v == Some(State::Dead)));
    let ltime = sim.nodes.get_mut(&1).unwrap().query("capacity".into(), b"free".to_vec(), 2_000, sim.now);
    for _ in 0..50 {
        sim.run_until(sim.now + 50);
        sim.answer_queries(|id, query| {
            matches!(&query.kind, CreKind::Query { name, .. } if name == "capacity")
                .then(|| id.to_string().into_bytes())
        });
    }
    let answers = sim
        .events
        .iter()
        .find_map(|(_, id, e)| match e {
            Event::QueryDone { ltime: t, answers } if *id == 1 && *t == ltime => Some(answers.clone()),
            _ => None,
        })
        .expect("the query closed");
    let mut from: Vec<NodeId> = answers.iter().map(|a| a.from).collect();
    from.sort();
    assert_eq!(from, (1..=29).collect::<Vec<_>>(), "the asker answers too");
    assert!(answers.iter().all(|a| a.payload == a.from.to_string().into_bytes() && a.coordinate.is_some()));
}

#[test]
fn a_query_replying_anywhere_but_its_origin_is_dropped() {
    let mut a = with_members(1, &[2, 3]);
    a.drain();
    let query = |reply_to: String, ltime| Cre {
        origin: 2,
        ltime,
        ack: true,
        kind: CreKind::Query { name: "ping".into(), payload: vec![], reply_to, timeout: 1_000 },
    };
    a.handle(
        5,
        Envelope {
            from: 3,
            from_addr: addr(3),
            message: Message::Gossip,
            updates: vec![Update::Cre(query("10.9.9.9:1".into(), 7))],
        },
    );
    let outputs = a.drain();
    assert!(!events(&outputs).iter().any(|e| matches!(e, Event::Cre(_))), "a forged reply_to is no query");
    assert!(sends(&outputs).iter().all(|(to, _)| to != "10.9.9.9:1"));
    a.handle(
        6,
        Envelope {
            from: 3,
            from_addr: addr(3),
            message: Message::Gossip,
            updates: vec![Update::Cre(query(addr(2), 8))],
        },
    );
    let outputs = a.drain();
    assert!(events(&outputs).iter().any(|e| matches!(e, Event::Cre(_))));
    assert!(sends(&outputs).iter().any(|(to, e)| *to == addr(2) && matches!(e.message, Message::CreAck { ltime: 8 })));
}

#[test]
fn join_and_leave_are_events_with_the_joiners_tags() {
    let mut sim = Sim::meshed(10, SwimConfig::lan(), 2);
    sim.join(11, SwimConfig::lan(), 1);
    sim.run_until(sim.now + 3_000);
    let joins = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::Cre(Cre { origin: 11, kind: CreKind::Join { .. }, .. })))
        .count();
    assert_eq!(joins, 10);
    sim.nodes.get_mut(&11).unwrap().leave(sim.now);
    sim.run_until(sim.now + 3_000);
    let leaves = sim
        .events
        .iter()
        .filter(|(_, _, e)| matches!(e, Event::Cre(Cre { origin: 11, kind: CreKind::Leave, .. })))
        .count();
    assert_eq!(leaves, 10);
}

#[test]
fn piggybacking_stops_at_the_datagram_budget() {
    let mut a = with_members(1, &(2..=200).collect::<Vec<_>>());
    for id in 2..=200 {
        a.apply(Update::Suspect { id, incarnation: 0, from: 1 }, 0);
        a.apply(
            Update::Cre(Cre {
                origin: id,
                ltime: 1,
                ack: false,
                kind: CreKind::Update { tags: zone(&"z".repeat(200)) },
            }),
            0,
        );
    }
    a.drain();
    a.tick(1_000);
    for (_, envelope) in sends(&a.drain()) {
        let size = crate::gossip::codec::encoded_len(&envelope);
        assert!(size <= SwimConfig::lan().max_message_bytes, "{size} bytes");
        assert!(!envelope.updates.is_empty());
    }
}

// The simulator's harsher conditions.

#[test]
fn a_healed_partition_merges_again_through_reconnects() {
    let mut sim = Sim::meshed(20, SwimConfig::local(), 31);
    sim.partition = (16..=20).collect();
    sim.run_until(40_000);
    assert!(sim.nodes[&1].member(18).is_some_and(|m| m.state == State::Dead), "the majority lost the minority");
    assert!(sim.nodes[&18].member(1).is_some_and(|m| m.state == State::Dead), "and the other way round");
    sim.partition.clear();
    let healed = (1..=20).all(|id| sim.time_until_all_see(id, State::Alive, 120_000).is_some());
    assert!(healed, "{:?}", (1..=20).map(|id| sim.views(id)).collect::<Vec<_>>());
}

#[test]
fn a_paused_node_is_suspected_and_refutes_when_it_resumes() {
    let mut sim = Sim::meshed(10, SwimConfig::lan(), 12);
    sim.run_until(2_000);
    sim.paused.insert(4);
    let suspected = (0..100).any(|_| {
        sim.run_until(sim.now + 100);
        sim.views(4).iter().filter(|v| **v != Some(State::Alive)).count() > 0
    });
    assert!(suspected, "nobody suspected the paused node");
    sim.paused.clear();
    let back = sim.time_until_all_see(4, State::Alive, 30_000);
    assert!(back.is_some(), "{:?}", sim.views(4));
    assert!(sim.nodes[&4].incarnation() >= 1, "it refuted with a higher incarnation");
    assert!(sim.events.iter().any(|(_, id, e)| *id == 4 && matches!(e, Event::Refuted { .. })));
}

#[test]
fn coordinates_learned_from_probe_acks_estimate_a_latency_matrix() {
    let mut sim = Sim::meshed(100, SwimConfig::lan(), 17);
    sim.place_on_plane(17);
    sim.run_until(120_000);
    let errors = sim.coordinate_errors();
    let median = errors[errors.len() / 2];
    assert!(median < 0.15, "median relative error {median}");
    let nearest = sim.nodes[&1].nearest(5);
    assert_eq!(nearest.len(), 5);
    let truly_nearest = (2..=100).map(|id| sim.rtt(1, id)).fold(f64::MAX, f64::min);
    assert!(sim.rtt(1, nearest[0].0) <= truly_nearest * 2.0, "the estimated nearest is near");
}

#[test]
fn a_node_restarting_after_a_graceful_leave_is_alive_again() {
    let mut sim = Sim::meshed(10, SwimConfig::lan(), 5);
    sim.nodes.get_mut(&3).unwrap().leave(sim.now);
    assert!(sim.time_until_all_see(3, State::Left, 10_000).is_some());
    // The same id starts afresh at incarnation 0 and joins; peers hold its leave at 1.
    sim.join(3, SwimConfig::lan(), 1);
    let back = sim.time_until_all_see(3, State::Alive, 30_000);
    assert!(back.is_some(), "{:?}", sim.views(3));
    assert!(sim.nodes[&3].incarnation() >= 2, "it overtook its previous life's leave");
}

#[test]
fn strangers_acknowledgements_and_events_are_ignored() {
    let mut a = with_members(1, &[2]);
    let ltime = a.set_tags(zone("a"), true, 0);
    a.handle(5, Envelope { from: 99, from_addr: addr(99), message: Message::CreAck { ltime }, updates: vec![] });
    let stranger = Update::Cre(Cre { origin: 77, ltime: 3, ack: false, kind: CreKind::Update { tags: zone("x") } });
    a.apply(stranger, 6);
    assert_eq!(a.tags_of(77), None, "no tags kept for a non-member");
    a.handle(7, Envelope { from: 2, from_addr: addr(2), message: Message::CreAck { ltime }, updates: vec![] });
    let settled = Event::Settled { ltime, settled: Settled::Acknowledged { acked: 1 } };
    assert!(events(&a.drain()).contains(&settled), "settled by member 2 alone, not by stranger 99");
}

#[test]
fn members_silent_halfway_to_the_deadline_get_the_event_directly() {
    let mut a = with_members(1, &[2, 3]);
    let ltime = a.set_tags(zone("a"), true, 0);
    a.handle(5, Envelope { from: 2, from_addr: addr(2), message: Message::CreAck { ltime }, updates: vec![] });
    a.drain();
    // Regular dissemination spends its transmissions in the first rounds.
    for now in (100..=4_900).step_by(100) {
        a.tick(now);
    }
    a.drain();
    a.tick(4_999);
    let carries_event = |e: &Envelope| e.updates.iter().any(|u| matches!(u, Update::Cre(c) if c.ltime == ltime));
    let direct = |outputs: &[Output]| {
        sends(outputs).into_iter().filter(|(_, e)| e.message == Message::Gossip && carries_event(e)).count()
    };
    assert_eq!(direct(&a.drain()), 0, "not before halfway");
    a.tick(5_000);
    let resent: Vec<String> = sends(&a.drain())
        .into_iter()
        .filter(|(_, e)| e.message == Message::Gossip && carries_event(e))
        .map(|(to, _)| to)
        .collect();
    assert!(resent.contains(&addr(3)) && !resent.contains(&addr(2)), "{resent:?}");
    a.tick(6_000);
    assert_eq!(direct(&a.drain()), 0, "only once");
}

#[test]
fn round_trips_below_a_millisecond_are_measured_with_the_callers_microseconds() {
    let mut a = with_members(1, &[2]);
    let mut b = with_members(2, &[1]);
    for round in 1..=30u64 {
        let now = round * 1_000;
        a.set_clock_micros(now * 1_000);
        a.tick(now);
        let (_, ping) = sends(&a.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ping { .. })).unwrap();
        b.handle(now, ping);
        let (_, ack) = sends(&b.drain()).into_iter().find(|(_, e)| matches!(e.message, Message::Ack { .. })).unwrap();
        // 250 µs later: the same millisecond, which a millisecond clock would call 0.
        a.set_clock_micros(now * 1_000 + 250);
        a.handle(now, ack);
        a.drain();
    }
    let estimate = a.nearest(1)[0].1;
    assert!(
        estimate > std::time::Duration::from_micros(100) && estimate < std::time::Duration::from_micros(600),
        "estimated {estimate:?} for a 250 µs round trip"
    );
}

#[test]
fn members_gone_longer_than_the_reconnect_timeout_are_forgotten() {
    let config = SwimConfig { reconnect_interval: 1_000, reconnect_timeout: 60_000, ..SwimConfig::lan() };
    let mut a = Swim::new(config, 1, addr(1), 0, 1);
    for id in [2, 3] {
        a.apply(alive(id), 0);
    }
    a.apply(Update::Cre(Cre { origin: 3, ltime: 5, ack: false, kind: CreKind::Update { tags: zone("z") } }), 0);
    a.apply(Update::Dead { id: 3, incarnation: 0, from: 2 }, 10);
    a.tick(59_000);
    assert!(a.member(3).is_some(), "still remembered (and tried) within the timeout");
    a.tick(61_000);
    assert!(a.member(3).is_none() && a.tags_of(3).is_none(), "forgotten after it");
    assert!(a.member(2).is_some(), "the living stay");
}
