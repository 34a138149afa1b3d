//! Executable memory for out-of-line slots, placed within ±2 GB of the probed code so that
//! RIP-relative operands and `jmp back` keep their rel32 forms. Chunks are mapped
//! read+exec with address hints in the gaps of `/proc/self/maps` nearest the site (as
//! uprobes' `find_nearest_page`) and written through `/proc/self/mem`; they are never
//! unmapped, slots are reused after their quarantine.

use crate::arch::site::SLOT_SIZE;
use crate::sys;

const CHUNK: u64 = 64 * 1024;
/// Farthest a chunk may be from a site, with room for the chunk and operands around it.
const REACH: u64 = (1 << 31) - (1 << 24);
const PAGE: u64 = 4096;

pub use nonstop_capture::maps::Mapping;

/// Reads `/proc/self/maps` (empty when it cannot be read: no gaps are known then).
pub fn read_maps() -> Vec<Mapping> {
    nonstop_capture::maps::read(None).unwrap_or_default()
}

struct Chunk {
    base: u64,
    used: u64,
    free: Vec<u64>,
}

/// The slot allocator (used by the arming thread only).
#[derive(Default)]
pub struct Slots {
    chunks: Vec<Chunk>,
    /// Bytes of one slot (0: [`SLOT_SIZE`]).
    unit: u64,
}

fn distance(a: u64, b: u64) -> u64 {
    a.abs_diff(b)
}

impl Slots {
    /// An allocator of `unit`-byte slots (trampolines are bigger than XOL slots).
    pub fn with_unit(unit: usize) -> Slots {
        Slots {
            chunks: Vec::new(),
            unit: unit as u64,
        }
    }

    fn unit(&self) -> u64 {
        if self.unit == 0 {
            SLOT_SIZE as u64
        } else {
            self.unit
        }
    }

    /// A slot within reach of `site`, mapping a new chunk when needed.
    pub fn alloc_near(&mut self, site: u64, maps: &[Mapping]) -> Option<u64> {
        let unit = self.unit();
        for c in self.chunks.iter_mut() {
            if distance(c.base, site) > REACH {
                continue;
            }
            if let Some(s) = c.free.pop() {
                return Some(s);
            }
            if c.used + unit <= CHUNK {
                let s = c.base + c.used;
                c.used += unit;
                return Some(s);
            }
        }
        // `maps` may be older than a chunk mapped since (by this allocator or another): the
        // gap it shows may be taken, and the room beside the new chunk is not shown. Then
        // the maps as they are now.
        let base = map_chunk_near(site, maps).or_else(|| map_chunk_near(site, &read_maps()))?;
        self.chunks.push(Chunk {
            base,
            used: unit,
            free: Vec::new(),
        });
        Some(base)
    }

    /// Whether `addr` is inside one of our chunks.
    pub fn contains(&self, addr: u64) -> bool {
        self.chunks
            .iter()
            .any(|c| addr >= c.base && addr < c.base + CHUNK)
    }

    /// Returns a slot no thread can be inside any more.
    pub fn free(&mut self, slot: u64) {
        if let Some(c) = self
            .chunks
            .iter_mut()
            .find(|c| slot >= c.base && slot < c.base + CHUNK)
        {
            c.free.push(slot);
        }
    }
}

fn map_chunk_near(site: u64, maps: &[Mapping]) -> Option<u64> {
    let mut maps: Vec<&Mapping> = maps.iter().collect();
    maps.sort_by_key(|m| m.start);
    let mut candidates = Vec::new();
    let low_limit = 0x10000u64;
    for pair in maps.windows(2) {
        let (prev, next) = (pair[0], pair[1]);
        if next.start < prev.end + CHUNK {
            continue;
        }
        if next.name == "[stack]" {
            continue; // room the main stack grows into
        }
        // Nearest end of the gap to the site; above [heap] keep clear of brk growth.
        if prev.end >= site && prev.name != "[heap]" {
            candidates.push(prev.end.next_multiple_of(PAGE));
        }
        if next.start <= site || prev.name == "[heap]" {
            candidates.push((next.start - CHUNK) & !(PAGE - 1));
        }
    }
    if let Some(first) = maps.first()
        && first.start >= low_limit + CHUNK
    {
        candidates.push((first.start - CHUNK) & !(PAGE - 1));
    }
    if let Some(last) = maps.last() {
        candidates.push(last.end.next_multiple_of(PAGE));
    }
    candidates.retain(|&c| {
        c >= low_limit
            && c + CHUNK <= 0x7fff_ffff_0000
            && distance(c, site) <= REACH
            && distance(c + CHUNK, site) <= REACH
    });
    candidates.sort_by_key(|&c| distance(c, site));
    candidates.into_iter().find_map(|c| {
        sys::mmap_fixed_noreplace(c, CHUNK as usize, libc::PROT_READ | libc::PROT_EXEC)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A site in this test binary's own code.
    fn site() -> u64 {
        site as fn() -> u64 as usize as u64
    }

    #[test]
    fn chunks_keep_coming_near_a_site_when_the_maps_given_are_stale() {
        // One view of the maps for every allocation, as `Engine::arm` does for the slot and
        // the trampoline of one probe: each chunk takes a gap that view still shows free.
        let stale = read_maps();
        let mut slots = Slots::with_unit(CHUNK as usize);
        let mut bases = Vec::new();
        for _ in 0..8 {
            let base = slots
                .alloc_near(site(), &stale)
                .expect("a chunk within reach of the site");
            assert!(distance(base, site()) <= REACH);
            bases.push(base);
        }
        bases.sort_unstable();
        bases.dedup();
        assert_eq!(bases.len(), 8, "each slot its own chunk");
    }
}
