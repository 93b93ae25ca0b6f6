//! A linearizability checker for histories of single-key registers (put, delete, get,
//! compare-and-swap), in the Wing & Gong search with Lowe's memoisation, as Porcupine does it.
//! Keys are independent registers, so a history is checked key by key (P-compositionality).
//!
//! An operation whose outcome the client never learned (a timeout, a lost connection) has no
//! return time: it may take effect at any point after its call, or never.

use std::collections::{BTreeMap, HashSet};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Input {
    Put(Vec<u8>),
    Delete,
    Get,
    /// Swap to `new` (`None`: delete) if the register holds `expected` (`None`: absent).
    Cas {
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Output {
    /// A put or delete that was acknowledged.
    Done,
    /// What a get returned.
    Value(Option<Vec<u8>>),
    /// Whether a CAS swapped.
    Swapped(bool),
    /// Never learned: the operation may or may not have taken effect.
    Unknown,
}

#[derive(Debug, Clone)]
pub struct Operation {
    pub client: usize,
    pub key: Vec<u8>,
    pub input: Input,
    pub output: Output,
    /// Nanoseconds on one monotonic clock.
    pub call: u64,
    /// `None` for operations with an unknown outcome.
    pub ret: Option<u64>,
}

type State = Option<Vec<u8>>;

/// Applies `input` to `state`; `None` if `output` is impossible from `state`.
fn step(state: &State, input: &Input, output: &Output) -> Option<State> {
    match (input, output) {
        (Input::Put(value), Output::Done | Output::Unknown) => Some(Some(value.clone())),
        (Input::Delete, Output::Done | Output::Unknown) => Some(None),
        (Input::Get, Output::Value(seen)) => (seen == state).then(|| state.clone()),
        (Input::Get, Output::Unknown) => Some(state.clone()),
        (Input::Cas { expected, new }, Output::Swapped(swapped)) => {
            let matches = state == expected;
            (matches == *swapped).then(|| if matches { new.clone() } else { state.clone() })
        }
        (Input::Cas { expected, new }, Output::Unknown) => {
            Some(if state == expected { new.clone() } else { state.clone() })
        }
        _ => None,
    }
}

#[derive(Debug)]
pub struct Violation {
    pub key: Vec<u8>,
    /// The operations of that key, in call order.
    pub operations: Vec<Operation>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "history of key {:?} is not linearizable:", String::from_utf8_lossy(&self.key))?;
        for op in self.operations.iter().take(60) {
            writeln!(
                f,
                "  client {:>3} [{:>12} .. {:>12}] {:?} -> {:?}",
                op.client,
                op.call,
                op.ret.map(|r| r.to_string()).unwrap_or_else(|| "?".into()),
                op.input,
                op.output
            )?;
        }
        Ok(())
    }
}

/// Checks every key's history; the first key that cannot be linearized is the error.
pub fn check(history: &[Operation]) -> Result<(), Violation> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_slice()).or_default().push(op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            let mut operations: Vec<Operation> = ops.into_iter().cloned().collect();
            operations.sort_by_key(|op| op.call);
            return Err(Violation { key: key.to_vec(), operations });
        }
    }
    Ok(())
}

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
}

/// Wing & Gong's search over one register, memoising (linearized set, state) pairs.
fn check_register(ops: &[&Operation]) -> bool {
    // Events sorted by time; at equal times calls first, so touching operations overlap.
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        order.push((op.call, true, i));
        order.push((op.ret.unwrap_or(u64::MAX), false, i));
    }
    order.sort_by_key(|(time, is_call, op)| (*time, !*is_call, *op));
    // A doubly linked list with a head sentinel at index 0.
    let head = 0;
    let mut events = vec![Event { op: usize::MAX, is_call: false, prev: usize::MAX, next: 1 }];
    let mut call_of = vec![0; ops.len()];
    let mut return_of = vec![0; ops.len()];
    for (i, (_, is_call, op)) in order.iter().enumerate() {
        let index = i + 1;
        events.push(Event { op: *op, is_call: *is_call, prev: index - 1, next: index + 1 });
        if *is_call {
            call_of[*op] = index;
        } else {
            return_of[*op] = index;
        }
    }
    let end = events.len();
    let unlink = |events: &mut Vec<Event>, index: usize| {
        let Event { prev, next, .. } = events[index];
        events[prev].next = next;
        if next < end {
            events[next].prev = prev;
        }
    };
    let relink = |events: &mut Vec<Event>, index: usize| {
        let Event { prev, next, .. } = events[index];
        events[prev].next = index;
        if next < end {
            events[next].prev = index;
        }
    };
    let words = ops.len().div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut state: State = None;
    let mut seen: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut stack: Vec<(usize, State)> = Vec::new();
    let mut entry = events[head].next;
    loop {
        if events[head].next >= end {
            return true;
        }
        if entry < end && events[entry].is_call {
            let event = events[entry];
            let op = ops[event.op];
            if let Some(next_state) = step(&state, &op.input, &op.output) {
                let mut next_linearized = linearized.clone();
                next_linearized[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((next_linearized.clone(), next_state.clone())) {
                    stack.push((entry, std::mem::replace(&mut state, next_state)));
                    linearized = next_linearized;
                    unlink(&mut events, entry);
                    unlink(&mut events, return_of[event.op]);
                    entry = events[head].next;
                    continue;
                }
            }
            entry = event.next;
            continue;
        }
        // Every pending call was tried, or an operation returned before any order of the
        // pending ones explained it: undo the last choice and try the next call after it.
        let Some((call, previous)) = stack.pop() else { return false };
        let op = events[call].op;
        linearized[op / 64] &= !(1 << (op % 64));
        state = previous;
        relink(&mut events, return_of[op]);
        relink(&mut events, call);
        entry = events[call].next;
    }
}

/// One client of a register workload: puts, linearizable gets and compare-and-swaps (from
/// what a stale get saw) on the registers `register(n)` picks, until `running()` is false; every
/// operation goes into `history` with its call and return times since `epoch`. A failed get
/// had no effect and is left out.
pub async fn register_client(
    client: pleiades::client::cluster::Cluster,
    client_id: usize,
    register: impl Fn(u64) -> Vec<u8>,
    running: impl Fn() -> bool,
    epoch: std::time::Instant,
    history: std::sync::Arc<std::sync::Mutex<Vec<Operation>>>,
) {
    use pleiades_proto::v1::ReadConsistency;
    let now = || epoch.elapsed().as_nanos() as u64;
    let mut n = 0u64;
    while running() {
        n += 1;
        let key = register(n);
        let value = format!("c{client_id}-{n}").into_bytes();
        let mut call = now();
        let (input, output) = match n % 3 {
            0 => match client.put(&key, &value).await {
                Ok(_) => (Input::Put(value), Output::Done),
                Err(_) => (Input::Put(value), Output::Unknown),
            },
            1 => match client.get(&key, 0, ReadConsistency::Linearizable).await {
                Ok(found) => (Input::Get, Output::Value(found.map(|v| v.value))),
                Err(_) => continue,
            },
            _ => {
                // Swap from what this client last saw to a fresh value.
                let expected = client.get(&key, 0, ReadConsistency::Stale).await.ok().flatten().map(|v| v.value);
                call = now();
                let input = Input::Cas { expected: expected.clone(), new: Some(value.clone()) };
                match client.cas(&key, expected.as_deref(), Some(&value)).await {
                    Ok(swapped) => (input, Output::Swapped(swapped.succeeded)),
                    Err(_) => (input, Output::Unknown),
                }
            }
        };
        let ret = (output != Output::Unknown).then(now);
        history.lock().unwrap_or_else(|p| p.into_inner()).push(Operation {
            client: client_id,
            key,
            input,
            output,
            call,
            ret,
        });
    }
    client.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: usize, input: Input, output: Output, call: u64, ret: Option<u64>) -> Operation {
        Operation { client, key: b"k".to_vec(), input, output, call, ret }
    }

    fn v(s: &str) -> Option<Vec<u8>> {
        Some(s.as_bytes().to_vec())
    }

    #[test]
    fn overlapping_operations_may_take_effect_in_either_order() {
        let history = vec![
            op(0, Input::Put(b"a".to_vec()), Output::Done, 0, Some(10)),
            op(1, Input::Put(b"b".to_vec()), Output::Done, 5, Some(15)),
            op(2, Input::Get, Output::Value(v("a")), 12, Some(20)),
            op(3, Input::Get, Output::Value(v("a")), 21, Some(22)),
        ];
        check(&history).unwrap();
    }

    #[test]
    fn a_read_of_an_overwritten_value_after_the_overwrite_completed_is_caught() {
        let history = vec![
            op(0, Input::Put(b"a".to_vec()), Output::Done, 0, Some(10)),
            op(0, Input::Put(b"b".to_vec()), Output::Done, 11, Some(20)),
            op(1, Input::Get, Output::Value(v("a")), 21, Some(30)),
        ];
        let violation = check(&history).unwrap_err();
        assert_eq!(violation.key, b"k");
        assert!(violation.to_string().contains("not linearizable"));
    }

    #[test]
    fn cas_outcomes_must_agree_with_the_register() {
        let ok = vec![
            op(0, Input::Cas { expected: None, new: v("1") }, Output::Swapped(true), 0, Some(5)),
            op(1, Input::Cas { expected: None, new: v("2") }, Output::Swapped(false), 1, Some(6)),
            op(1, Input::Cas { expected: v("1"), new: v("2") }, Output::Swapped(true), 7, Some(8)),
            op(2, Input::Get, Output::Value(v("2")), 9, Some(10)),
        ];
        check(&ok).unwrap();
        let both_won = vec![
            op(0, Input::Cas { expected: None, new: v("1") }, Output::Swapped(true), 0, Some(5)),
            op(1, Input::Cas { expected: None, new: v("2") }, Output::Swapped(true), 1, Some(6)),
        ];
        assert!(check(&both_won).is_err(), "two CAS from absent cannot both win");
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        let applied = vec![
            op(0, Input::Put(b"x".to_vec()), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Value(v("x")), 50, Some(60)),
        ];
        check(&applied).unwrap();
        let not_applied = vec![
            op(0, Input::Put(b"x".to_vec()), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Value(None), 50, Some(60)),
            op(1, Input::Get, Output::Value(v("x")), 70, Some(80)),
        ];
        check(&not_applied).unwrap();
        let flicker = vec![
            op(0, Input::Put(b"x".to_vec()), Output::Unknown, 0, None),
            op(1, Input::Get, Output::Value(v("x")), 50, Some(60)),
            op(1, Input::Get, Output::Value(None), 70, Some(80)),
        ];
        assert!(check(&flicker).is_err(), "a value cannot appear and then vanish without a delete");
    }

    /// A simulated replicated register: writes go to the leader and reach a follower `lag`
    /// steps later. With `read_from_follower` the read path is deliberately broken (a
    /// "linearizable" read served by a lagging follower); the checker must catch it.
    fn simulate(read_from_follower: bool, seed: u64) -> Vec<Operation> {
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let lag = 3usize;
        let mut leader_log: Vec<Option<Vec<u8>>> = vec![None];
        let mut history = Vec::new();
        let mut time = 0u64;
        for i in 0..200u64 {
            time += 10;
            let client = (next() % 4) as usize;
            if next() % 2 == 0 {
                let value = format!("v{i}").into_bytes();
                leader_log.push(Some(value.clone()));
                history.push(Operation {
                    client,
                    key: b"k".to_vec(),
                    input: Input::Put(value),
                    output: Output::Done,
                    call: time,
                    ret: Some(time + 5),
                });
            } else {
                let applied =
                    if read_from_follower { leader_log.len().saturating_sub(lag).max(1) } else { leader_log.len() };
                let seen = leader_log[applied - 1].clone();
                history.push(Operation {
                    client,
                    key: b"k".to_vec(),
                    input: Input::Get,
                    output: Output::Value(seen),
                    call: time,
                    ret: Some(time + 5),
                });
            }
        }
        history
    }

    #[test]
    fn a_deliberately_broken_read_path_fails_the_check() {
        for seed in 1..=5 {
            check(&simulate(false, seed)).unwrap_or_else(|v| panic!("the correct read path passes: {v}"));
            assert!(check(&simulate(true, seed)).is_err(), "stale follower reads must be caught (seed {seed})");
        }
    }
}
