//! A set of sequence numbers stored as disjoint ranges: a queue's references cost one entry
//! per gap, not one per message, so a FIFO backlog of millions is a single range.

use std::collections::BTreeMap;

use crate::Seq;

/// A set of `Seq`s as `start → end` (end exclusive), with no two ranges touching.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: BTreeMap<Seq, Seq>,
    len: u64,
}

impl RangeSet {
    /// An empty set.
    pub fn new() -> RangeSet {
        RangeSet::default()
    }

    /// Number of members.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of ranges (the memory it costs).
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// Whether `seq` is a member.
    pub fn contains(&self, seq: Seq) -> bool {
        self.ranges.range(..=seq).next_back().is_some_and(|(_, end)| seq < *end)
    }

    /// Adds `seq`; returns false if it was already there. Appending above the highest
    /// member is O(log n) and merges into the last range.
    pub fn insert(&mut self, seq: Seq) -> bool {
        let before = self.ranges.range(..=seq).next_back().map(|(s, e)| (*s, *e));
        if let Some((_, end)) = before
            && seq < end
        {
            return false;
        }
        let after = self.ranges.get(&(seq + 1)).copied();
        match (before, after) {
            (Some((start, end)), Some(after_end)) if end == seq => {
                self.ranges.remove(&(seq + 1));
                self.ranges.insert(start, after_end);
            }
            (Some((start, end)), _) if end == seq => {
                self.ranges.insert(start, seq + 1);
            }
            (_, Some(after_end)) => {
                self.ranges.remove(&(seq + 1));
                self.ranges.insert(seq, after_end);
            }
            _ => {
                self.ranges.insert(seq, seq + 1);
            }
        }
        self.len += 1;
        true
    }

    /// Removes `seq`; returns false if it was not there.
    pub fn remove(&mut self, seq: Seq) -> bool {
        let Some((start, end)) = self.ranges.range(..=seq).next_back().map(|(s, e)| (*s, *e))
        else {
            return false;
        };
        if seq >= end {
            return false;
        }
        if start == seq {
            self.ranges.remove(&start);
        } else {
            self.ranges.insert(start, seq);
        }
        if seq + 1 < end {
            self.ranges.insert(seq + 1, end);
        }
        self.len -= 1;
        true
    }

    /// Removes every member in `from..=to`, returning how many there were.
    pub fn remove_range(&mut self, from: Seq, to: Seq) -> u64 {
        if to < from {
            return 0;
        }
        let mut tail = self.split_off_from(from);
        let mut after = tail.split_off_from(to.saturating_add(1));
        let removed = tail.len();
        self.len += after.len;
        self.ranges.append(&mut after.ranges);
        removed
    }

    /// Removes and returns every member from `from` on.
    pub fn split_off_from(&mut self, from: Seq) -> RangeSet {
        let mut tail = RangeSet { ranges: self.ranges.split_off(&from), len: 0 };
        if let Some((&start, &end)) = self.ranges.range(..from).next_back()
            && end > from
        {
            self.ranges.insert(start, from);
            tail.ranges.insert(from, end);
        }
        tail.len = tail.ranges.iter().map(|(s, e)| e - s).sum();
        self.len -= tail.len;
        tail
    }

    /// The ranges, as `(first, end exclusive)`.
    pub fn ranges(&self) -> impl Iterator<Item = (Seq, Seq)> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// The members in increasing order.
    pub fn iter(&self) -> impl Iterator<Item = Seq> + '_ {
        self.ranges.iter().flat_map(|(start, end)| *start..*end)
    }

    /// The members from `from` on, in increasing order.
    pub fn iter_from(&self, from: Seq) -> impl Iterator<Item = Seq> + '_ {
        let first = self
            .ranges
            .range(..=from)
            .next_back()
            .filter(|(_, end)| from < **end)
            .map(|(_, end)| from..*end);
        first.into_iter().flatten().chain(
            self.ranges.range(from.saturating_add(1)..).flat_map(|(start, end)| *start..*end),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_in_order_keeps_one_range() {
        let mut set = RangeSet::new();
        for seq in 1..=1000 {
            assert!(set.insert(seq));
        }
        assert_eq!(set.range_count(), 1);
        assert_eq!(set.len(), 1000);
        assert!(!set.insert(500));
    }

    #[test]
    fn removing_splits_and_inserting_merges() {
        let mut set = RangeSet::new();
        (1..=10).for_each(|s| {
            set.insert(s);
        });
        assert!(set.remove(5));
        assert!(!set.remove(5));
        assert_eq!(set.range_count(), 2);
        assert!(!set.contains(5));
        assert!(set.insert(5));
        assert_eq!(set.range_count(), 1);
        assert!(set.remove(1) && set.remove(10));
        assert_eq!(set.iter().collect::<Vec<_>>(), (2..=9).collect::<Vec<_>>());
        assert!(!set.remove(0) && !set.remove(100));
        assert_eq!(set.iter_from(5).take(3).collect::<Vec<_>>(), vec![5, 6, 7]);
        assert!(set.remove(6));
        assert_eq!(set.iter_from(6).take(2).collect::<Vec<_>>(), vec![7, 8]);
        assert_eq!(set.iter_from(0).next(), Some(2));
        assert_eq!(set.iter_from(10).next(), None);
        let tail = set.split_off_from(5);
        assert_eq!(tail.iter().collect::<Vec<_>>(), vec![5, 7, 8, 9]);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![2, 3, 4]);
        assert_eq!((set.len(), tail.len()), (3, 4));
        let mut whole = RangeSet::new();
        (1..=20).for_each(|s| {
            whole.insert(s);
        });
        assert_eq!(whole.remove_range(5, 9), 5);
        assert_eq!(whole.remove_range(5, 9), 0);
        assert_eq!(
            whole.iter().collect::<Vec<_>>(),
            [1, 2, 3, 4].into_iter().chain(10..=20).collect::<Vec<_>>()
        );
        assert_eq!(whole.len(), 15);
    }

    #[test]
    fn matches_a_plain_set_under_random_operations() {
        let mut set = RangeSet::new();
        let mut model = std::collections::BTreeSet::new();
        let mut x: u64 = 0x9E37_79B9;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let seq = x % 200;
            if x.is_multiple_of(3) {
                assert_eq!(set.remove(seq), model.remove(&seq));
            } else {
                assert_eq!(set.insert(seq), model.insert(seq));
            }
            assert_eq!(set.len(), model.len() as u64);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), model.into_iter().collect::<Vec<_>>());
    }
}
