//! Fitting documents into rows of at most `max_length` tokens, losing nothing by default.
//!
//! First every document longer than `max_length` is split into pieces (or, only when asked,
//! truncated, and the cut counted). Then the pieces go into rows: one per row (`None`),
//! best-fit-decreasing over the whole table (`Bfd`), or concatenated and cut every `max_length`
//! tokens (`Wrapped`, which splits documents at row ends). Each document in a row restarts its
//! position ids at 0 and its first label is ignored, so nothing is predicted across documents.

use std::collections::BTreeMap;

use crate::sft::{Documents, IGNORE};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    None,
    Bfd,
    Wrapped,
}

/// What to do with a document longer than `max_length`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    /// Into consecutive pieces of at most `max_length` tokens (lossless).
    Split,
    /// Keep the first `max_length` tokens and count the rest as truncated.
    Truncate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackOptions {
    pub max_length: Option<usize>,
    pub packing: Packing,
    pub overflow: Overflow,
}

/// Counts for the run report.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackStats {
    pub documents: usize,
    pub documents_split: usize,
    /// Pieces created by splitting (a document split in 3 adds 3 pieces).
    pub split_pieces: usize,
    pub documents_truncated: usize,
    pub tokens_truncated: usize,
    /// Trained labels turned into IGNORE because a piece of a split document starts there.
    pub labels_masked_at_splits: usize,
    pub rows: usize,
    pub tokens: usize,
    pub trained_tokens: usize,
    /// Rows × max_length, when packing: how full the rows are is tokens / capacity.
    pub capacity: usize,
}

/// The output table, flattened: row `r` is `ids[row_offsets[r]..row_offsets[r+1]]` and holds
/// the documents `seq_lengths[seq_offsets[r]..seq_offsets[r+1]]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Packed {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub position_ids: Vec<i32>,
    pub row_offsets: Vec<usize>,
    pub seq_lengths: Vec<i32>,
    pub seq_offsets: Vec<usize>,
    pub stats: PackStats,
}

/// A contiguous range of one document's tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    start: usize,
    len: usize,
    /// Whether this piece starts inside its document (its first label gets masked).
    continuation: bool,
}

/// Splits or truncates documents longer than `max_length` into pieces.
fn pieces(docs: &Documents, max_length: Option<usize>, overflow: Overflow, stats: &mut PackStats) -> Vec<Piece> {
    let mut out = Vec::with_capacity(docs.len());
    for d in 0..docs.len() {
        let (start, end) = (docs.offsets[d], docs.offsets[d + 1]);
        let len = end - start;
        match max_length {
            Some(max) if len > max => match overflow {
                Overflow::Split => {
                    stats.documents_split += 1;
                    let mut s = start;
                    while s < end {
                        let l = max.min(end - s);
                        out.push(Piece { start: s, len: l, continuation: s != start });
                        stats.split_pieces += 1;
                        s += l;
                    }
                }
                Overflow::Truncate => {
                    stats.documents_truncated += 1;
                    stats.tokens_truncated += len - max;
                    out.push(Piece { start, len: max, continuation: false });
                }
            },
            _ => out.push(Piece { start, len, continuation: false }),
        }
    }
    out
}

/// Best-fit-decreasing: longest first, each into the fullest row that still has room.
/// Returns rows as lists of indices into `lengths`; deterministic for equal inputs.
pub fn best_fit_decreasing(lengths: &[usize], capacity: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut bins: Vec<Vec<usize>> = Vec::new();
    // remaining room -> rows with exactly that room (stack: reuse the newest first)
    let mut by_room: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in order {
        let len = lengths[i];
        let found = by_room.range_mut(len..).next().map(|(&room, rows)| (room, rows.pop().unwrap()));
        let (room, bin) = match found {
            Some((room, bin)) => {
                if by_room[&room].is_empty() {
                    by_room.remove(&room);
                }
                (room, bin)
            }
            None => {
                bins.push(Vec::new());
                (capacity.max(len), bins.len() - 1)
            }
        };
        bins[bin].push(i);
        let left = room - len;
        if left > 0 {
            by_room.entry(left).or_default().push(bin);
        }
    }
    bins
}

struct Writer<'a> {
    docs: &'a Documents,
    out: Packed,
}

impl Writer<'_> {
    fn push_piece(&mut self, piece: Piece) {
        let ids = &self.docs.ids[piece.start..piece.start + piece.len];
        let labels = &self.docs.labels[piece.start..piece.start + piece.len];
        self.out.ids.extend_from_slice(ids);
        let first = self.out.labels.len();
        self.out.labels.extend_from_slice(labels);
        if piece.len > 0 {
            if self.out.labels[first] != IGNORE {
                self.out.stats.labels_masked_at_splits += usize::from(piece.continuation);
                self.out.labels[first] = IGNORE;
            }
        }
        self.out.position_ids.extend(0..piece.len as i32);
        self.out.seq_lengths.push(piece.len as i32);
    }

    fn end_row(&mut self) {
        self.out.row_offsets.push(self.out.ids.len());
        self.out.seq_offsets.push(self.out.seq_lengths.len());
    }
}

/// Packs `docs` into the output table.
pub fn pack(docs: &Documents, opts: PackOptions) -> Packed {
    let mut stats = PackStats { documents: docs.len(), ..Default::default() };
    // Wrapped packing splits long documents at row ends by itself.
    let split_at = if (opts.packing, opts.overflow) == (Packing::Wrapped, Overflow::Split) { None } else { opts.max_length };
    let pieces = pieces(docs, split_at, opts.overflow, &mut stats);
    let total: usize = pieces.iter().map(|p| p.len).sum();
    let mut w = Writer {
        docs,
        out: Packed {
            ids: Vec::with_capacity(total),
            labels: Vec::with_capacity(total),
            position_ids: Vec::with_capacity(total),
            row_offsets: vec![0],
            seq_offsets: vec![0],
            stats,
            ..Default::default()
        },
    };
    match (opts.packing, opts.max_length) {
        (Packing::Bfd, Some(max)) => {
            let lengths: Vec<usize> = pieces.iter().map(|p| p.len).collect();
            for bin in best_fit_decreasing(&lengths, max) {
                for i in bin {
                    w.push_piece(pieces[i]);
                }
                w.end_row();
            }
        }
        (Packing::Wrapped, Some(max)) => {
            let mut room = max;
            for mut piece in pieces {
                while piece.len > room {
                    if room > 0 {
                        w.push_piece(Piece { len: room, ..piece });
                        w.out.stats.documents_split += usize::from(!piece.continuation);
                        w.out.stats.split_pieces += 1 + usize::from(!piece.continuation);
                        piece = Piece { start: piece.start + room, len: piece.len - room, continuation: true };
                    }
                    w.end_row();
                    room = max;
                }
                if piece.len > 0 {
                    w.push_piece(piece);
                    room -= piece.len;
                }
            }
            if w.out.row_offsets.last() != Some(&w.out.ids.len()) {
                w.end_row();
            }
        }
        // No packing (or no length to pack to): one row per piece.
        _ => {
            for piece in pieces {
                w.push_piece(piece);
                w.end_row();
            }
        }
    }
    let mut out = w.out;
    out.stats.rows = out.row_offsets.len() - 1;
    out.stats.tokens = out.ids.len();
    out.stats.trained_tokens = out.labels.iter().filter(|&&l| l != IGNORE).count();
    if opts.packing != Packing::None {
        out.stats.capacity = out.stats.rows * opts.max_length.unwrap_or(0);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sft::Example;

    fn docs(lengths: &[usize]) -> Documents {
        let mut next = 0u32;
        Documents::from_examples(lengths.iter().enumerate().map(|(r, &n)| {
            let ids: Vec<u32> = (0..n).map(|_| { next += 1; next }).collect();
            let labels = ids.iter().map(|&i| i as i32).collect();
            (r as u32, Example { ids, labels })
        }))
    }

    fn rows(p: &Packed) -> Vec<Vec<u32>> {
        p.row_offsets.windows(2).map(|w| p.ids[w[0]..w[1]].to_vec()).collect()
    }

    #[test]
    fn bfd_puts_each_piece_in_the_fullest_row_with_room() {
        let bins = best_fit_decreasing(&[6, 5, 4, 3, 2], 8);
        // 6 -> A(2 left), 5 -> B(3 left), 4 -> C(4 left), 3 -> B(0), 2 -> A(0)
        assert_eq!(bins, vec![vec![0, 4], vec![1, 3], vec![2]]);
    }

    #[test]
    fn bfd_loses_no_token_and_respects_max_length() {
        let lens = [7, 1, 9, 3, 3, 12, 5, 2, 8, 8, 1];
        let d = docs(&lens);
        let p = pack(&d, PackOptions { max_length: Some(8), packing: Packing::Bfd, overflow: Overflow::Split });
        let mut all: Vec<u32> = p.ids.clone();
        all.sort();
        assert_eq!(all, d.ids);
        assert!(rows(&p).iter().all(|r| r.len() <= 8));
        assert_eq!(p.stats.documents_split, 2); // 9 and 12
        assert_eq!(p.stats.tokens_truncated, 0);
        assert_eq!(p.seq_lengths.iter().sum::<i32>() as usize, p.ids.len());
    }

    #[test]
    fn positions_restart_and_first_label_is_ignored_in_every_document() {
        let d = docs(&[3, 2]);
        let p = pack(&d, PackOptions { max_length: Some(8), packing: Packing::Bfd, overflow: Overflow::Split });
        assert_eq!(p.position_ids, vec![0, 1, 2, 0, 1]);
        assert_eq!(p.labels, vec![IGNORE, 2, 3, IGNORE, 5]);
        assert_eq!(p.seq_lengths, vec![3, 2]);
    }

    #[test]
    fn truncation_only_when_asked_and_counted() {
        let d = docs(&[10, 3]);
        let p = pack(&d, PackOptions { max_length: Some(4), packing: Packing::None, overflow: Overflow::Truncate });
        assert_eq!(p.stats.tokens_truncated, 6);
        assert_eq!(rows(&p), vec![vec![1, 2, 3, 4], vec![11, 12, 13]]);
    }

    #[test]
    fn no_packing_no_length_is_one_row_per_document() {
        let d = docs(&[10, 3]);
        let p = pack(&d, PackOptions { max_length: None, packing: Packing::None, overflow: Overflow::Split });
        assert_eq!(rows(&p).len(), 2);
        assert_eq!(p.stats.documents_split, 0);
    }

    #[test]
    fn wrapped_cuts_every_max_length_tokens() {
        let d = docs(&[5, 6]);
        let p = pack(&d, PackOptions { max_length: Some(4), packing: Packing::Wrapped, overflow: Overflow::Split });
        assert_eq!(rows(&p), vec![vec![1, 2, 3, 4], vec![5, 6, 7, 8], vec![9, 10, 11]]);
        assert_eq!(p.seq_lengths, vec![4, 1, 3, 3]);
        assert_eq!(p.position_ids, vec![0, 1, 2, 3, 0, 0, 1, 2, 0, 1, 2]);
    }
}
