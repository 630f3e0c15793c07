//! The namespace prefix declarations in scope while tokenizing, looked up
//! for every prefixed name.
//!
//! A stanza declares one or two prefixes, if any, and a scan from the
//! innermost declaration outwards is the cheapest lookup. But nothing but
//! the stanza size limit bounds how many a peer may declare (declarations
//! are not attributes for the count limit), and a scan per lookup would
//! let 256 KiB of declarations and prefixed names cost a quadratic number
//! of comparisons (about half a second of CPU each). Past
//! [`INDEXED`] declarations in scope the list is therefore also indexed by
//! prefix, so every lookup and every duplicate check stays O(1).

use std::collections::HashMap;

use compact_str::CompactString;

/// Declarations in scope from which on lookups go through the index.
const INDEXED: usize = 32;

#[derive(Debug, Default)]
pub(super) struct PrefixDecls {
    /// `(prefix, namespace)`, outermost first; a shadowed declaration
    /// stays, to be uncovered when its shadow goes out of scope.
    list: Vec<(CompactString, CompactString)>,
    /// Where in `list` each prefix is declared, innermost last; kept only
    /// while `list` is long (empty otherwise).
    index: HashMap<CompactString, Vec<usize>>,
}

impl PrefixDecls {
    pub(super) fn len(&self) -> usize {
        self.list.len()
    }

    fn indexed(&self) -> bool {
        !self.index.is_empty()
    }

    pub(super) fn push(&mut self, prefix: CompactString, ns: CompactString) {
        if self.indexed() {
            self.index
                .entry(prefix.clone())
                .or_default()
                .push(self.list.len());
        }
        self.list.push((prefix, ns));
        if !self.indexed() && self.list.len() > INDEXED {
            for (i, (p, _)) in self.list.iter().enumerate() {
                self.index.entry(p.clone()).or_default().push(i);
            }
        }
    }

    /// Drops the declarations from `len` on (an element's end, or a tag
    /// read again after its fast path gave up).
    #[inline]
    pub(super) fn truncate(&mut self, len: usize) {
        if len >= self.list.len() {
            return;
        }
        self.truncate_to(len);
    }

    /// [`PrefixDecls::truncate`] when there is something to drop: out of
    /// line, so that the usual end of an element (one that declared
    /// nothing) costs a comparison.
    fn truncate_to(&mut self, len: usize) {
        if self.indexed() {
            if len <= INDEXED / 2 {
                // Short again: back to scanning (hysteresis, so that a
                // peer cannot make every element rebuild the index).
                self.index = HashMap::new();
            } else {
                for (p, _) in self.list.drain(len..).rev() {
                    if let Some(at) = self.index.get_mut(&p) {
                        at.pop();
                        if at.is_empty() {
                            self.index.remove(&p);
                        }
                    }
                }
            }
        }
        self.list.truncate(len);
    }

    /// The namespace `prefix` is bound to, innermost declaration first.
    pub(super) fn lookup(&self, prefix: &str) -> Option<&CompactString> {
        let at = if self.indexed() {
            *self.index.get(prefix)?.last()?
        } else {
            self.list.iter().rposition(|(p, _)| p == prefix)?
        };
        Some(&self.list[at].1)
    }

    /// Whether `prefix` is declared at position `from` or later (on the
    /// tag being read, when `from` is where its declarations start).
    pub(super) fn declared_since(&self, from: usize, prefix: &str) -> bool {
        if self.indexed() {
            return self
                .index
                .get(prefix)
                .and_then(|at| at.last())
                .is_some_and(|&at| at >= from);
        }
        self.list[from.min(self.list.len())..]
            .iter()
            .any(|(p, _)| p == prefix)
    }

    /// Releases spare capacity while idle.
    pub(super) fn shrink(&mut self) {
        self.list.shrink_to_fit();
        self.index.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cs(s: &str) -> CompactString {
        CompactString::new(s)
    }

    /// Pushes and truncations across the index threshold, against a plain
    /// scan of the same list.
    #[test]
    fn lookups_agree_with_a_scan_across_the_index_threshold() {
        let mut d = PrefixDecls::default();
        let mut plain: Vec<(String, String)> = Vec::new();
        let check = |d: &PrefixDecls, plain: &[(String, String)]| {
            for p in ["p0", "p1", "p7", "p40", "q", "none"] {
                let want = plain
                    .iter()
                    .rev()
                    .find(|(q, _)| q == p)
                    .map(|(_, n)| n.as_str());
                assert_eq!(d.lookup(p).map(|n| n.as_str()), want, "{p}");
                for from in [0, 10, 30, plain.len()] {
                    let want = plain
                        .get(from..)
                        .is_some_and(|s| s.iter().any(|(q, _)| q == p));
                    assert_eq!(d.declared_since(from, p), want, "{p} since {from}");
                }
            }
        };
        for round in 0..3 {
            for i in 0..80 {
                let (p, n) = (format!("p{}", i % 45), format!("urn:{round}:{i}"));
                d.push(cs(&p), cs(&n));
                plain.push((p, n));
                check(&d, &plain);
            }
            for len in [70, 50, 40, 33, 20, 16, 10] {
                d.truncate(len);
                plain.truncate(len);
                check(&d, &plain);
                d.push(cs("q"), cs("urn:q"));
                plain.push(("q".into(), "urn:q".into()));
                check(&d, &plain);
            }
        }
    }
}
