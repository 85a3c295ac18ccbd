//! A direct, cached encoder for SentencePiece-style BPE tokenizers (Mistral, Llama 2 fast
//! conversions): the same ids and offsets as the `tokenizers` pipeline, without its per-call
//! normalization and alignment bookkeeping.
//!
//! It applies only to tokenizers whose whole pipeline it can reproduce, checked at load:
//! added tokens matched verbatim (not normalized, no strip/single-word rules) by leftmost-longest
//! search as the crate does; a normalizer that only replaces `' '` with `'▁'`; no
//! pre-tokenizer; a BPE whose vocabulary proves the piece split exact (see `tokenizer.rs`). The
//! text between added tokens is cut into pieces before each space (or `▁`) that follows another
//! character; each distinct piece is tokenized once by the BPE model and then served from a
//! per-thread cache keyed by the original piece text, with offsets relative to the piece.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use ahash::AHashMap;
use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use serde_json::json;
use tokenizers::models::ModelWrapper;
use tokenizers::{Model, Tokenizer};

use crate::tokenizer::piece_split_is_exact;

/// Pieces cached per thread and tokenizer; past this, pieces are tokenized without caching.
const CACHE_ENTRIES: usize = 1_000_000;
/// Longer pieces (long runs of symbols, base64) rarely repeat: not worth a cache slot.
const CACHE_MAX_PIECE: usize = 128;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Cached tokens of one piece: `[id, start, end]` triples, offsets in bytes of the piece.
type Entry = Box<[u32]>;

thread_local! {
    static CACHE: RefCell<HashMap<u64, AHashMap<Box<str>, Entry>>> = RefCell::new(HashMap::new());
}

pub struct PieceEncoder {
    id: u64,
    model: ModelWrapper,
    added: Option<DoubleArrayAhoCorasick<u32>>,
}

impl std::fmt::Debug for PieceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceEncoder").field("id", &self.id).finish()
    }
}

impl PieceEncoder {
    /// The encoder for `tok`, or `None` when its pipeline is not one this reproduces exactly.
    pub fn new(tok: &Tokenizer) -> Option<Self> {
        if !piece_split_is_exact(tok.get_model()) || tok.get_pre_tokenizer().is_some() {
            return None;
        }
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let normalizer_ok = match tok.get_normalizer() {
            None => false, // without the replacement there are no `▁` to split on
            Some(n) => {
                let v = serde_json::to_value(n).ok()?;
                v == replace || v == json!({"type": "Sequence", "normalizers": [replace]})
            }
        };
        if !normalizer_ok || tok.get_encode_special_tokens() {
            return None;
        }
        let mut patterns: Vec<(String, u32)> = Vec::new();
        for (id, token) in tok.get_added_tokens_decoder() {
            if token.normalized || token.lstrip || token.rstrip || token.single_word || token.content.is_empty() {
                return None;
            }
            patterns.push((token.content.clone(), id));
        }
        let added = if patterns.is_empty() {
            None
        } else {
            Some(
                DoubleArrayAhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build_with_values(patterns.iter().map(|(s, id)| (s.as_str(), *id)))
                    .ok()?,
            )
        };
        Some(Self { id: NEXT_ID.fetch_add(1, Ordering::Relaxed), model: tok.get_model().clone(), added })
    }

    /// Appends the ids (and, when `offsets` is given, the byte spans in `text`) of `text`.
    pub fn encode(&self, text: &str, ids: &mut Vec<u32>, mut offsets: Option<&mut Vec<(usize, usize)>>) -> Result<(), String> {
        let mut start = 0;
        if let Some(trie) = &self.added {
            for m in trie.leftmost_find_iter(text) {
                self.encode_segment(&text[start..m.start()], start, ids, offsets.as_deref_mut())?;
                ids.push(m.value());
                if let Some(o) = offsets.as_deref_mut() {
                    o.push((m.start(), m.end()));
                }
                start = m.end();
            }
        }
        self.encode_segment(&text[start..], start, ids, offsets)
    }

    fn encode_segment(
        &self,
        segment: &str,
        base: usize,
        ids: &mut Vec<u32>,
        mut offsets: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), String> {
        if segment.is_empty() {
            return Ok(());
        }
        CACHE.with(|cache| {
            let mut cache = cache.borrow_mut();
            let cache = cache.entry(self.id).or_default();
            let mut piece_start = 0;
            let mut prev_space = true; // no boundary before the first character
            let bytes = segment.as_bytes();
            let mut i = 0;
            while i < bytes.len() {
                // ' ' is one byte; '▁' is E2 96 81. Any other char leaves us outside a space run.
                let (space, width) = match bytes[i] {
                    b' ' => (true, 1),
                    0xE2 if bytes.get(i + 1) == Some(&0x96) && bytes.get(i + 2) == Some(&0x81) => (true, 3),
                    _ => (false, 1),
                };
                if space && !prev_space {
                    self.push_piece(cache, &segment[piece_start..i], base + piece_start, ids, offsets.as_deref_mut())?;
                    piece_start = i;
                }
                // Continuation bytes of other multi-byte chars count as "not a space", as the char does.
                prev_space = space;
                i += width;
            }
            self.push_piece(cache, &segment[piece_start..], base + piece_start, ids, offsets)
        })
    }

    fn push_piece(
        &self,
        cache: &mut AHashMap<Box<str>, Entry>,
        piece: &str,
        base: usize,
        ids: &mut Vec<u32>,
        offsets: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), String> {
        let fresh;
        let entry: &Entry = match cache.get(piece) {
            Some(e) => e,
            None => {
                fresh = self.tokenize_piece(piece)?;
                if piece.len() <= CACHE_MAX_PIECE && cache.len() < CACHE_ENTRIES {
                    cache.insert(piece.into(), fresh.clone());
                }
                &fresh
            }
        };
        match offsets {
            None => ids.extend(entry.chunks_exact(3).map(|t| t[0])),
            Some(o) => {
                for t in entry.chunks_exact(3) {
                    ids.push(t[0]);
                    o.push((base + t[1] as usize, base + t[2] as usize));
                }
            }
        }
        Ok(())
    }

    /// Tokenizes one piece with the BPE model, mapping offsets from the normalized piece
    /// (spaces became 3-byte `▁`) back to the original bytes. A span that starts or ends inside
    /// a character (byte-fallback tokens) widens to the whole character, as the crate's
    /// alignments do.
    fn tokenize_piece(&self, piece: &str) -> Result<Entry, String> {
        let normalized = piece.replace(' ', "▁");
        let mut start_of = vec![0u32; normalized.len() + 1];
        let mut end_of = vec![0u32; normalized.len() + 1];
        let (mut n, mut o) = (0usize, 0usize);
        for c in piece.chars() {
            let (nl, ol) = if c == ' ' { (3, 1) } else { (c.len_utf8(), c.len_utf8()) };
            for k in 0..nl {
                start_of[n + k] = o as u32;
                end_of[n + k] = (if k == 0 { o } else { o + ol }) as u32;
            }
            n += nl;
            o += ol;
        }
        start_of[n] = o as u32;
        end_of[n] = o as u32;
        let tokens = self.model.tokenize(&normalized).map_err(|e| e.to_string())?;
        let mut entry = Vec::with_capacity(tokens.len() * 3);
        for t in tokens {
            entry.extend_from_slice(&[t.id, start_of[t.offsets.0], end_of[t.offsets.1]]);
        }
        Ok(entry.into_boxed_slice())
    }
}

impl Drop for PieceEncoder {
    fn drop(&mut self) {
        // Only this thread's cache can be reached; other threads' entries are freed with them.
        let _ = CACHE.try_with(|c| c.borrow_mut().remove(&self.id));
    }
}
