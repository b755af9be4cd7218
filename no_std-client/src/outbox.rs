//! Unacknowledged QoS 1 (and QoS 2) publishes, kept encoded in a byte arena the application lends the client, so
//! they can be sent again (with DUP) after a reconnect. No allocator: the arena is a ring of whole packets, the index a
//! fixed-capacity deque; an acknowledgement may arrive out of order, and space is reclaimed from the oldest end.

use heapless::Deque;

/// A stored packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    packet_id: u16,
    start: usize,
    len: usize,
    acked: bool,
    /// QoS 2: PUBREC arrived, so after a reconnect PUBREL is what is sent again, not the PUBLISH.
    released: bool,
}

/// A stored, unacknowledged packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'o> {
    /// Its packet identifier.
    pub packet_id: u16,
    /// The encoded PUBLISH.
    pub packet: &'o [u8],
    /// QoS 2 only: the server has it (PUBREC); PUBCOMP is awaited.
    pub released: bool,
}

/// Why a packet could not be stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OutboxFull {
    /// `N` packets are unacknowledged.
    Slots,
    /// The arena has no contiguous room for the packet now (acknowledgements will free it).
    Bytes,
    /// The packet is larger than the whole arena.
    TooLarge,
}

/// Up to `N` unacknowledged packets in `arena`.
#[derive(Debug)]
pub struct Outbox<'a, const N: usize> {
    arena: &'a mut [u8],
    entries: Deque<Entry, N>,
}

impl<'a, const N: usize> Outbox<'a, N> {
    /// An empty outbox over `arena`.
    pub fn new(arena: &'a mut [u8]) -> Self {
        Outbox { arena, entries: Deque::new() }
    }

    /// Packets stored and not yet acknowledged.
    pub fn len(&self) -> usize {
        self.entries.iter().filter(|e| !e.acked).count()
    }

    /// Whether nothing waits for an acknowledgement.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `packet_id` waits for an acknowledgement.
    pub fn contains(&self, packet_id: u16) -> bool {
        self.entries.iter().any(|e| e.packet_id == packet_id && !e.acked)
    }

    /// Where `len` bytes fit, if they do.
    fn place(&self, len: usize) -> Result<usize, OutboxFull> {
        if len > self.arena.len() {
            return Err(OutboxFull::TooLarge);
        }
        if self.entries.is_full() {
            return Err(OutboxFull::Slots);
        }
        let (Some(front), Some(back)) = (self.entries.front(), self.entries.back()) else {
            return Ok(0);
        };
        let next = back.start + back.len;
        if front.start < next {
            // Not wrapped: room after the newest, else before the oldest.
            if self.arena.len() - next >= len {
                return Ok(next);
            }
            if front.start >= len {
                return Ok(0);
            }
            return Err(OutboxFull::Bytes);
        }
        // Wrapped: the room lies between the newest and the oldest.
        if front.start - next >= len { Ok(next) } else { Err(OutboxFull::Bytes) }
    }

    /// Stores an encoded packet under `packet_id`.
    pub fn push(&mut self, packet_id: u16, packet: &[u8]) -> Result<(), OutboxFull> {
        let start = self.place(packet.len())?;
        let slot = self.arena.get_mut(start..start + packet.len()).ok_or(OutboxFull::Bytes)?;
        slot.copy_from_slice(packet);
        let entry = Entry { packet_id, start, len: packet.len(), acked: false, released: false };
        self.entries.push_back(entry).map_err(|_| OutboxFull::Slots)
    }

    /// The acknowledgement of `packet_id`; returns whether it was waiting.
    pub fn ack(&mut self, packet_id: u16) -> bool {
        let Some(entry) = self.entries.iter_mut().find(|e| e.packet_id == packet_id && !e.acked) else {
            return false;
        };
        entry.acked = true;
        while self.entries.front().is_some_and(|e| e.acked) {
            self.entries.pop_front();
        }
        true
    }

    /// QoS 2: PUBREC for `packet_id` arrived; returns whether it was waiting.
    #[cfg(feature = "qos2")]
    pub fn release(&mut self, packet_id: u16) -> bool {
        match self.entries.iter_mut().find(|e| e.packet_id == packet_id && !e.acked) {
            Some(entry) => {
                entry.released = true;
                true
            }
            None => false,
        }
    }

    /// Sets the DUP flag on every stored packet, for sending them again after a reconnect.
    pub fn mark_dup(&mut self) {
        for e in self.entries.iter().filter(|e| !e.acked) {
            if let Some(first) = self.arena.get_mut(e.start) {
                *first |= 0x08;
            }
        }
    }

    /// The `index`-th unacknowledged packet, oldest first.
    pub fn get(&self, index: usize) -> Option<Stored<'_>> {
        let e = self.entries.iter().filter(|e| !e.acked).nth(index)?;
        let packet = self.arena.get(e.start..e.start + e.len)?;
        Some(Stored { packet_id: e.packet_id, packet, released: e.released })
    }

    /// Forgets everything (a clean session the server did not keep, or the application gave up).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_wrap_around_the_arena_and_space_returns_from_the_oldest_end() {
        let mut arena = [0u8; 10];
        let mut o: Outbox<'_, 4> = Outbox::new(&mut arena);
        o.push(1, &[0x32, 1, 1, 1]).unwrap();
        o.push(2, &[0x32, 2, 2, 2]).unwrap();
        assert_eq!(o.push(3, &[0x32, 3, 3, 3]), Err(OutboxFull::Bytes), "2 bytes left at the end, none before");
        // Acknowledged out of order: 2 first frees nothing (1 is older), then 1 frees both.
        assert!(o.ack(2));
        assert_eq!(o.push(3, &[0x32, 3, 3, 3]), Err(OutboxFull::Bytes));
        assert!(o.ack(1));
        o.push(3, &[0x32, 3, 3, 3]).unwrap();
        o.push(4, &[0x32, 4, 4, 4]).unwrap();
        o.push(5, &[0x32, 5]).unwrap();
        assert_eq!(o.len(), 3);
        assert!(o.ack(3));
        o.push(6, &[0x32, 6, 6]).unwrap();
        let ids: std::vec::Vec<u16> = (0..o.len()).filter_map(|i| o.get(i)).map(|s| s.packet_id).collect();
        assert_eq!(ids, [4, 5, 6]);
        o.mark_dup();
        assert_eq!(o.get(0).map(|s| s.packet), Some(&[0x3a, 4, 4, 4][..]), "DUP set for the resend");
        assert!(!o.ack(99));
        assert_eq!(o.push(7, &[0u8; 11]), Err(OutboxFull::TooLarge));
    }

    proptest::proptest! {
        /// Any sequence of stores and acknowledgements keeps every unacknowledged packet intact, in order, and
        /// never overlaps two of them.
        #[test]
        fn stored_packets_stay_intact(ops in proptest::collection::vec((proptest::prelude::any::<bool>(), 1usize..12, proptest::prelude::any::<u8>()), 0..200)) {
            let mut arena = [0u8; 32];
            let mut o: Outbox<'_, 6> = Outbox::new(&mut arena);
            let mut model: std::collections::VecDeque<(u16, std::vec::Vec<u8>)> = std::collections::VecDeque::new();
            let mut next = 1u16;
            for (store, len, pick) in ops {
                if store {
                    let packet: std::vec::Vec<u8> = (0..len).map(|i| (next as u8).wrapping_add(i as u8)).collect();
                    if o.push(next, &packet).is_ok() {
                        model.push_back((next, packet));
                    }
                    next += 1;
                } else if !model.is_empty() {
                    let i = usize::from(pick) % model.len();
                    let (id, _) = model.remove(i).unwrap_or_default();
                    proptest::prop_assert!(o.ack(id));
                }
                proptest::prop_assert_eq!(o.len(), model.len());
                for (i, (id, bytes)) in model.iter().enumerate() {
                    proptest::prop_assert_eq!(o.get(i).map(|s| (s.packet_id, s.packet)), Some((*id, bytes.as_slice())));
                }
            }
        }
    }
}
