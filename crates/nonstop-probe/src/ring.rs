//! A lock-free multi-producer, single-consumer ring of fixed-size records (Vyukov's bounded
//! queue): trap handlers reserve a slot with one CAS and commit with a release store; the
//! agent thread drains in order. A full ring refuses the reservation; the caller counts it.

use std::cell::UnsafeCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::sys;

/// What travels with a record besides its bytes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordMeta {
    /// The probe's id.
    pub probe: u64,
    /// CLOCK_MONOTONIC at the hit, in ns.
    pub time_ns: u64,
    /// Thread id of the thread that hit the probe.
    pub tid: u32,
    /// Bytes of the record.
    pub len: u32,
}

/// The ring. Its memory is mapped once and never freed (the engine is process-global).
pub struct Ring {
    mask: u64,
    slot_size: usize,
    head: AtomicU64,
    tail: Mutex<u64>,
    seqs: Box<[AtomicU64]>,
    metas: Box<[UnsafeCell<RecordMeta>]>,
    data: u64,
}

// SAFETY: a slot's meta and data are written only by the producer that reserved it (between
// its CAS and its release store of `seq`) and read only by the single consumer (holding
// `tail`) after an acquire load of `seq`; the protocol gives each side exclusive access.
unsafe impl Sync for Ring {}
// SAFETY: as above; the raw data pointer is owned by the ring.
unsafe impl Send for Ring {}

/// A reserved slot; commit it with [`Ring::commit`].
pub struct Reservation {
    pos: u64,
}

impl Ring {
    /// A ring of `slots` (rounded up to a power of two) records of `slot_size` bytes each.
    pub fn new(slots: usize, slot_size: usize) -> Option<Ring> {
        let slots = slots.max(2).next_power_of_two();
        let slot_size = slot_size.max(1024).next_multiple_of(64);
        let data = sys::mmap_anon(slots.checked_mul(slot_size)?)?;
        Some(Ring {
            mask: slots as u64 - 1,
            slot_size,
            head: AtomicU64::new(0),
            tail: Mutex::new(0),
            seqs: (0..slots as u64).map(AtomicU64::new).collect(),
            metas: (0..slots)
                .map(|_| UnsafeCell::new(RecordMeta::default()))
                .collect(),
            data,
        })
    }

    /// Bytes available to one record.
    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Reserves a slot, or `None` when the ring is full. Lock-free, async-signal-safe.
    pub fn reserve(&self) -> Option<Reservation> {
        let mut pos = self.head.load(Ordering::Relaxed);
        loop {
            let seq = self
                .seqs
                .get((pos & self.mask) as usize)?
                .load(Ordering::Acquire);
            if seq == pos {
                match self.head.compare_exchange_weak(
                    pos,
                    pos + 1,
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Some(Reservation { pos }),
                    Err(now) => pos = now,
                }
            } else if seq < pos {
                return None;
            } else {
                pos = self.head.load(Ordering::Relaxed);
            }
        }
    }

    /// The record bytes of a reserved slot (borrowed through the reservation, which is
    /// what grants exclusive access).
    pub fn buffer<'a>(&'a self, r: &'a mut Reservation) -> &'a mut [u8] {
        let at = self.data + (r.pos & self.mask) * self.slot_size as u64;
        // SAFETY: the slot lies inside the ring's mapping, and the reservation gives this
        // producer exclusive access until it commits (see the Sync impl).
        unsafe { std::slice::from_raw_parts_mut(at as *mut u8, self.slot_size) }
    }

    /// Publishes a reserved slot.
    pub fn commit(&self, r: Reservation, meta: RecordMeta) {
        let i = (r.pos & self.mask) as usize;
        if let (Some(m), Some(seq)) = (self.metas.get(i), self.seqs.get(i)) {
            // SAFETY: exclusive access to the reserved slot's meta until the store below.
            unsafe { *m.get() = meta };
            seq.store(r.pos + 1, Ordering::Release);
        }
    }

    /// Whether a committed record waits to be drained (consumer side).
    pub fn has_committed(&self) -> bool {
        let tail = *self.tail.lock().unwrap_or_else(|e| e.into_inner());
        self.seqs
            .get((tail & self.mask) as usize)
            .is_some_and(|s| s.load(Ordering::Acquire) == tail + 1)
    }

    /// Calls `f` for every committed record in order, up to the first uncommitted one;
    /// returns how many.
    pub fn drain(&self, mut f: impl FnMut(RecordMeta, &[u8])) -> usize {
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        let mut n = 0;
        loop {
            let pos = *tail;
            let i = (pos & self.mask) as usize;
            let (Some(seq), Some(m)) = (self.seqs.get(i), self.metas.get(i)) else {
                break;
            };
            if seq.load(Ordering::Acquire) != pos + 1 {
                break;
            }
            // SAFETY: committed and not yet released: only the consumer (we hold `tail`) reads it.
            let meta = unsafe { *m.get() };
            let at = self.data + (pos & self.mask) * self.slot_size as u64;
            let len = (meta.len as usize).min(self.slot_size);
            // SAFETY: as above, the slot's bytes are ours to read until released.
            let bytes = unsafe { std::slice::from_raw_parts(at as *const u8, len) };
            f(meta, bytes);
            seq.store(pos + self.mask + 1, Ordering::Release);
            *tail = pos + 1;
            n += 1;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fills_drops_and_drains_in_order() {
        let ring = Ring::new(4, 1024).unwrap();
        for i in 0..4 {
            let mut r = ring.reserve().unwrap();
            ring.buffer(&mut r)[0] = i as u8;
            ring.commit(
                r,
                RecordMeta {
                    probe: i,
                    len: 1,
                    ..Default::default()
                },
            );
        }
        assert!(ring.reserve().is_none());
        let mut seen = Vec::new();
        assert_eq!(ring.drain(|m, b| seen.push((m.probe, b[0]))), 4);
        assert_eq!(seen, vec![(0, 0), (1, 1), (2, 2), (3, 3)]);
        assert!(ring.reserve().is_some());
    }

    #[test]
    fn many_producers_lose_nothing_that_was_reserved() {
        let ring = std::sync::Arc::new(Ring::new(1024, 1024).unwrap());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let ring = ring.clone();
                std::thread::spawn(move || {
                    let mut ok = 0;
                    for i in 0..200u64 {
                        if let Some(r) = ring.reserve() {
                            ring.commit(
                                r,
                                RecordMeta {
                                    probe: t * 1000 + i,
                                    len: 0,
                                    ..Default::default()
                                },
                            );
                            ok += 1;
                        }
                    }
                    ok
                })
            })
            .collect();
        let ok: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(ring.drain(|_, _| {}), ok);
    }
}
