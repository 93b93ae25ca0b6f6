//! A stream's received bytes not yet decoded. Frame headers and small frames go into one buffer;
//! the payload of a message in progress goes into blocks, allocated as its bytes arrive and
//! joined once when the last one does. A payload that never completes — a slow or stalled
//! sender — thus holds the bytes it sent and no copy of them, whatever its header claims, and the
//! budget reserved for it is the memory it holds.

use bytes::BytesMut;

/// Largest block of a payload in progress.
const BLOCK: usize = 64 * 1024;

#[derive(Default)]
pub struct Inbound {
    head: BytesMut,
    blocks: Vec<BytesMut>,
}

impl Inbound {
    /// Bytes received and not yet decoded.
    pub fn len(&self) -> usize {
        self.head.len() + self.blocks.iter().map(BytesMut::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Memory held.
    pub fn capacity(&self) -> usize {
        self.head.capacity() + self.blocks.iter().map(BytesMut::capacity).sum::<usize>()
    }

    /// The memory held after `want` more bytes arrive; `remaining` is what the payload in
    /// progress still lacks, if one is.
    pub fn capacity_after(&self, want: usize, remaining: Option<usize>) -> usize {
        let extra = match remaining {
            Some(remaining) => {
                let room = self.blocks.last().map_or(0, |block| block.capacity() - block.len());
                if room >= want {
                    0
                } else {
                    remaining.min(BLOCK).max(want)
                }
            }
            None => self.head_capacity_for(want) - self.head.capacity(),
        };
        self.capacity() + extra
    }

    /// The head's capacity once `more` bytes are in it: as it is if they fit, else grown by half
    /// again (copies stay amortised) or to what they need.
    fn head_capacity_for(&self, more: usize) -> usize {
        let (needed, capacity) = (self.head.len() + more, self.head.capacity());
        if needed <= capacity {
            capacity
        } else {
            (capacity + capacity / 2).max(needed)
        }
    }

    /// Appends received bytes; `remaining` as for [`Inbound::capacity_after`], before them.
    pub fn push(&mut self, bytes: &[u8], remaining: Option<usize>) {
        let Some(remaining) = remaining else {
            let capacity = self.head_capacity_for(bytes.len());
            if capacity > self.head.capacity() {
                let mut grown = BytesMut::with_capacity(capacity);
                grown.extend_from_slice(&self.head);
                self.head = grown;
            }
            self.head.extend_from_slice(bytes);
            return;
        };
        let mut rest = bytes;
        let mut remaining = remaining;
        while !rest.is_empty() {
            let room = self.blocks.last().map_or(0, |block| block.capacity() - block.len());
            if room == 0 {
                self.blocks.push(BytesMut::with_capacity(remaining.min(BLOCK).max(rest.len().min(BLOCK))));
                continue;
            }
            let take = room.min(rest.len());
            if let Some(block) = self.blocks.last_mut() {
                block.extend_from_slice(&rest[..take]);
            }
            rest = &rest[take..];
            remaining = remaining.saturating_sub(take);
        }
    }

    /// The bytes to decode, the payload in progress joined to the head first (one copy, when it
    /// is complete or the stream ended).
    pub fn joined(&mut self) -> &mut BytesMut {
        if !self.blocks.is_empty() {
            let mut whole = BytesMut::with_capacity(self.len());
            whole.extend_from_slice(&self.head);
            for block in self.blocks.drain(..) {
                whole.extend_from_slice(&block);
            }
            self.head = whole;
        }
        &mut self.head
    }

    /// Gives the memory back once everything was decoded.
    pub fn release_if_empty(&mut self) {
        if self.is_empty() {
            *self = Inbound::default();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_in_progress_holds_what_arrived_in_blocks_and_is_joined_once() {
        let mut inbound = Inbound::default();
        inbound.push(&[1; 16], None);
        inbound.joined().clear(); // the header was decoded
        let size = 200_000;
        let mut remaining = size;
        for _ in 0..3 {
            let capacity = inbound.capacity_after(50_000, Some(remaining));
            inbound.push(&vec![7; 50_000], Some(remaining));
            remaining -= 50_000;
            assert!(inbound.capacity() <= capacity, "the plan covers what was allocated");
        }
        assert_eq!(inbound.len(), 150_000);
        assert!(inbound.capacity() <= 150_000 + BLOCK, "no room for the claimed {size} bytes");
        inbound.push(&vec![7; 50_000], Some(remaining));
        let joined = inbound.joined();
        assert_eq!(joined.len(), size);
        assert!(joined.iter().all(|b| *b == 7));
        joined.clear();
        inbound.release_if_empty();
        assert_eq!(inbound.capacity(), 0);
    }

    #[test]
    fn a_small_payload_gets_a_block_of_its_own_size() {
        let mut inbound = Inbound::default();
        assert_eq!(inbound.capacity_after(100, Some(300)), 300);
        inbound.push(&[1; 100], Some(300));
        assert_eq!(inbound.capacity(), 300);
        assert_eq!(inbound.capacity_after(200, Some(200)), 300, "the rest fits the block");
    }

    #[test]
    fn the_head_grows_by_half_again() {
        let mut inbound = Inbound::default();
        inbound.push(&[1; 16], None);
        assert_eq!(inbound.capacity(), 16);
        assert_eq!(inbound.capacity_after(4, None), 24);
        inbound.push(&[1; 4], None);
        assert_eq!(inbound.capacity(), 24);
    }
}
