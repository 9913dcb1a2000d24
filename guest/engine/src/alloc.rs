//! The data block allocator.
//!
//! Free space is not stored: at open it is derived from the extents table (every block of the
//! data region that no extent refers to is free), so space can never leak across a crash.
//! In memory the free space is an ordered map of free runs.
//!
//! Blocks freed by a change are not reused until that change is durable ([`Allocator::free`]
//! parks them; [`Allocator::release_pending`] runs after a durable flush). Otherwise a crash
//! could bring back a file whose blocks had meanwhile been given to — and overwritten by —
//! another file.

use std::collections::BTreeMap;

/// A run of blocks: first block and count.
pub(crate) type Run = (u64, u64);

/// The run being marked used overlaps space already in use or lies outside the data region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Conflict {
    pub start: u64,
    pub len: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Allocator {
    free: BTreeMap<u64, u64>,
    free_blocks: u64,
    pending: Vec<Run>,
    pending_blocks: u64,
    start: u64,
    end: u64,
    cursor: u64,
}

/// How many free runs to look at for one that fits a request whole before taking pieces.
const FIT_SEARCH: usize = 256;

impl Allocator {
    /// An allocator with every block of `[start, end)` free.
    pub fn new(start: u64, end: u64) -> Allocator {
        let mut free = BTreeMap::new();
        if end > start {
            free.insert(start, end - start);
        }
        Allocator {
            free,
            free_blocks: end.saturating_sub(start),
            pending: Vec::new(),
            pending_blocks: 0,
            start,
            end,
            cursor: start,
        }
    }

    /// Blocks that can be allocated now.
    pub fn free_blocks(&self) -> u64 {
        self.free_blocks
    }

    /// Blocks freed but not yet reusable.
    pub fn pending_blocks(&self) -> u64 {
        self.pending_blocks
    }

    /// Blocks of the data region.
    pub fn total_blocks(&self) -> u64 {
        self.end - self.start
    }

    /// Marks `[start, start+len)` used; it must be entirely free.
    pub fn mark_used(&mut self, start: u64, len: u64) -> Result<(), Conflict> {
        let conflict = Conflict { start, len };
        let end = start.checked_add(len).ok_or(conflict)?;
        if len == 0 || start < self.start || end > self.end {
            return Err(conflict);
        }
        let (&s, &l) = self.free.range(..=start).next_back().ok_or(conflict)?;
        if s + l < end {
            return Err(conflict);
        }
        self.take(s, l, start, len);
        Ok(())
    }

    /// Removes `[at, at+n)` from the free run `(s, l)` that contains it.
    fn take(&mut self, s: u64, l: u64, at: u64, n: u64) {
        self.free.remove(&s);
        if at > s {
            self.free.insert(s, at - s);
        }
        if at + n < s + l {
            self.free.insert(at + n, s + l - (at + n));
        }
        self.free_blocks -= n;
    }

    /// Allocates `want` blocks, as few runs as it can, starting at `hint` if that block is free
    /// (so a file written sequentially stays contiguous). All or nothing.
    pub fn allocate(&mut self, want: u64, hint: Option<u64>) -> Option<Vec<Run>> {
        if want == 0 {
            return Some(Vec::new());
        }
        if want > self.free_blocks {
            return None;
        }
        let mut runs = Vec::new();
        let mut left = want;
        if let Some(h) = hint
            && let Some((&s, &l)) = self.free.range(..=h).next_back()
            && h < s + l
        {
            let n = left.min(s + l - h);
            self.take(s, l, h, n);
            runs.push((h, n));
            left -= n;
        }
        if left > 0 {
            // One run that fits the rest whole, looking forward from the cursor.
            let fit = self
                .free
                .range(self.cursor..)
                .chain(self.free.range(..self.cursor))
                .take(FIT_SEARCH)
                .find(|&(_, &l)| l >= left)
                .map(|(&s, &l)| (s, l));
            if let Some((s, l)) = fit {
                self.take(s, l, s, left);
                runs.push((s, left));
                left = 0;
            }
        }
        while left > 0 {
            // Fragmented: the largest pieces first keeps the number of runs down.
            let (s, l) = self.free.iter().max_by_key(|&(_, &l)| l).map(|(&s, &l)| (s, l))?;
            let n = left.min(l);
            self.take(s, l, s, n);
            runs.push((s, n));
            left -= n;
        }
        if let Some(&(s, n)) = runs.last() {
            self.cursor = s + n;
        }
        Some(runs)
    }

    /// Frees a run once the change that freed it is durable.
    pub fn free(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.pending.push((start, len));
            self.pending_blocks += len;
        }
    }

    /// Returns runs that were allocated but never published, for immediate reuse.
    pub fn unreserve(&mut self, start: u64, len: u64) {
        self.insert_free(start, len);
    }

    /// The parked runs, sorted and with neighbours merged (to discard them before release).
    pub fn pending_runs(&self) -> Vec<Run> {
        let mut runs = self.pending.clone();
        runs.sort_unstable();
        let mut merged: Vec<Run> = Vec::with_capacity(runs.len());
        for (s, l) in runs {
            match merged.last_mut() {
                Some((ms, ml)) if *ms + *ml == s => *ml += l,
                _ => merged.push((s, l)),
            }
        }
        merged
    }

    /// Makes the parked runs reusable; call after a durable flush.
    pub fn release_pending(&mut self) {
        for (s, l) in std::mem::take(&mut self.pending) {
            self.insert_free(s, l);
        }
        self.pending_blocks = 0;
    }

    /// Adds `[old end, end)` to the free space.
    pub fn grow(&mut self, end: u64) {
        if end > self.end {
            let old = self.end;
            self.end = end;
            self.insert_free(old, end - old);
        }
    }

    fn insert_free(&mut self, mut start: u64, mut len: u64) {
        if len == 0 {
            return;
        }
        self.free_blocks += len;
        if let Some((&ps, &pl)) = self.free.range(..start).next_back()
            && ps + pl == start
        {
            self.free.remove(&ps);
            start = ps;
            len += pl;
        }
        if let Some(nl) = self.free.remove(&(start + len)) {
            len += nl;
        }
        self.free.insert(start, len);
    }

    /// The free runs, for fsck and tests.
    #[cfg(test)]
    pub fn free_runs(&self) -> Vec<Run> {
        self.free.iter().map(|(&s, &l)| (s, l)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_allocations_with_hints_stay_contiguous() {
        let mut a = Allocator::new(100, 1100);
        let first = a.allocate(10, None).expect("space");
        assert_eq!(first, vec![(100, 10)]);
        let next = a.allocate(10, Some(110)).expect("space");
        assert_eq!(next, vec![(110, 10)]);
        assert_eq!(a.free_blocks(), 980);
    }

    #[test]
    fn freed_blocks_are_reusable_only_after_release() {
        let mut a = Allocator::new(0, 10);
        let all = a.allocate(10, None).expect("space");
        assert_eq!(all, vec![(0, 10)]);
        a.free(2, 3);
        assert!(a.allocate(1, None).is_none());
        a.release_pending();
        assert_eq!(a.allocate(3, None), Some(vec![(2, 3)]));
    }

    #[test]
    fn pending_runs_come_sorted_and_merged() {
        let mut a = Allocator::new(0, 100);
        a.allocate(100, None).expect("space");
        a.free(10, 5);
        a.free(0, 10);
        a.free(50, 1);
        assert_eq!(a.pending_runs(), vec![(0, 15), (50, 1)]);
    }

    #[test]
    fn fragmented_space_is_handed_out_in_pieces_and_coalesces_back() {
        let mut a = Allocator::new(0, 12);
        for s in [0u64, 4, 8] {
            a.mark_used(s, 2).expect("free");
        }
        let runs = a.allocate(6, None).expect("space");
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), 6);
        assert_eq!(a.free_blocks(), 0);
        for (s, l) in runs {
            a.unreserve(s, l);
        }
        for s in [0u64, 4, 8] {
            a.unreserve(s, 2);
        }
        assert_eq!(a.free_runs(), vec![(0, 12)]);
    }

    #[test]
    fn marking_a_used_run_twice_or_outside_is_a_conflict() {
        let mut a = Allocator::new(10, 20);
        a.mark_used(12, 3).expect("free");
        assert!(a.mark_used(14, 2).is_err());
        assert!(a.mark_used(5, 2).is_err());
        assert!(a.mark_used(19, 2).is_err());
        a.grow(30);
        a.mark_used(19, 2).expect("now inside");
    }
}
