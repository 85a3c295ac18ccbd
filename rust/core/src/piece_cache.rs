//! A direct, cached encoder for SentencePiece-style BPE tokenizers (Mistral, Llama 2 fast
//! conversions): the same ids and offsets as the `tokenizers` pipeline, without its per-call
//! normalization and alignment bookkeeping.
//!
//! It applies only to tokenizers whose whole pipeline it can reproduce, checked at load:
//! added tokens matched verbatim (not normalized, no strip/single-word rules) by leftmost-longest
//! search as the crate does; spaces turned into `▁` either by a `Replace` normalizer (no
//! pre-tokenizer) or by a non-splitting `Metaspace` pre-tokenizer (no normalizer) with any
//! prepend scheme; a BPE whose vocabulary proves the piece split exact (see `tokenizer.rs`). The
//! text between added tokens is cut into pieces before each space (or `▁`) that follows another
//! character; each distinct piece is tokenized once by the BPE model and then served from a
//! cache shared by all threads (sharded locks), keyed by the original piece text, with offsets
//! relative to the piece.

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

use ahash::AHashMap;
use daachorse::{DoubleArrayAhoCorasick, DoubleArrayAhoCorasickBuilder, MatchKind};
use serde_json::json;
use tokenizers::models::ModelWrapper;
use tokenizers::{Model, Tokenizer};

use crate::tokenizer::piece_split_is_exact;

/// Pieces cached per tokenizer; past this, new pieces are tokenized without caching.
const CACHE_ENTRIES: usize = 2_000_000;
const SHARDS: usize = 64;
/// Longer pieces (long runs of symbols, base64) rarely repeat: not worth a cache slot.
const CACHE_MAX_PIECE: usize = 128;

/// Cached tokens of one piece: `[id, start, end]` triples, offsets in bytes of the piece.
type Entry = Box<[u32]>;

/// Piece text -> tokens, shared by the worker threads so a piece is tokenized once per table,
/// not once per thread.
struct SharedCache {
    hasher: ahash::RandomState,
    shards: Vec<RwLock<AHashMap<Box<str>, Entry>>>,
    len: AtomicUsize,
}

impl SharedCache {
    fn new() -> Self {
        Self {
            hasher: ahash::RandomState::new(),
            shards: (0..SHARDS).map(|_| RwLock::new(AHashMap::new())).collect(),
            len: AtomicUsize::new(0),
        }
    }

    fn shard(&self, piece: &str) -> &RwLock<AHashMap<Box<str>, Entry>> {
        let mut h = self.hasher.build_hasher();
        piece.hash(&mut h);
        &self.shards[h.finish() as usize % SHARDS]
    }

    /// Calls `f` with the cached tokens of `piece`, if any.
    fn with<R>(&self, piece: &str, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let shard = self.shard(piece).read().unwrap_or_else(|e| e.into_inner());
        shard.get(piece).map(f)
    }

    fn insert(&self, piece: &str, entry: Entry) {
        if piece.len() > CACHE_MAX_PIECE || self.len.load(Ordering::Relaxed) >= CACHE_ENTRIES {
            return;
        }
        let mut shard = self.shard(piece).write().unwrap_or_else(|e| e.into_inner());
        if shard.insert(piece.into(), entry).is_none() {
            self.len.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// When a `▁` is put in front of a segment (Metaspace's `prepend_scheme`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prepend {
    Never,
    /// Only the segment at the very start of the text.
    First,
    Always,
}

pub struct PieceEncoder {
    model: ModelWrapper,
    added: Option<DoubleArrayAhoCorasick<u32>>,
    prepend: Prepend,
    /// Pieces as they appear, and first pieces of segments that got a `▁` prepended.
    plain: SharedCache,
    prepended: SharedCache,
}

impl std::fmt::Debug for PieceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceEncoder").field("prepend", &self.prepend).finish()
    }
}

impl PieceEncoder {
    /// The encoder for `tok`, or `None` when its pipeline is not one this reproduces exactly.
    pub fn new(tok: &Tokenizer) -> Option<Self> {
        if !piece_split_is_exact(tok.get_model()) || tok.get_encode_special_tokens() {
            return None;
        }
        let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let normalizer = tok.get_normalizer().map(serde_json::to_value).transpose().ok()?;
        let pre_tokenizer = tok.get_pre_tokenizer().map(serde_json::to_value).transpose().ok()?;
        let prepend = match (normalizer, pre_tokenizer) {
            (Some(n), None) if n == replace || n == json!({"type": "Sequence", "normalizers": [replace]}) => Prepend::Never,
            (None, Some(p)) if p["type"] == "Metaspace" && p["replacement"] == "▁" && p["split"] == false => {
                match p["prepend_scheme"].as_str()? {
                    "always" => Prepend::Always,
                    "first" => Prepend::First,
                    "never" => Prepend::Never,
                    _ => return None,
                }
            }
            _ => return None,
        };
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
        let mut model = tok.get_model().clone();
        if let ModelWrapper::BPE(bpe) = &mut model {
            bpe.resize_cache(0); // pieces are cached here; the model's own cache would only duplicate them
        }
        Some(Self { model, added, prepend, plain: SharedCache::new(), prepended: SharedCache::new() })
    }

    /// Appends the ids (and, when `offsets` is given, the byte spans in `text`) of `text`.
    pub fn encode(&self, text: &str, ids: &mut Vec<u32>, mut offsets: Option<&mut Vec<(usize, usize)>>) -> Result<(), String> {
        let mut start = 0;
        if let Some(trie) = &self.added {
            for m in trie.leftmost_find_iter(text) {
                self.encode_segment(&text[start..m.start()], start, true, ids, offsets.as_deref_mut())?;
                ids.push(m.value());
                if let Some(o) = offsets.as_deref_mut() {
                    o.push((m.start(), m.end()));
                }
                start = m.end();
            }
        }
        self.encode_segment(&text[start..], start, true, ids, offsets)
    }

    /// The ids that `encode(text)` gives after byte `from`, when `from` is a clean boundary:
    /// not inside an added token, and either a segment edge or the start of a piece. Then
    /// `encode(text)` is exactly `encode(&text[..from])` followed by these ids (the tokens
    /// before `from` do not depend on what follows), so a prompt shared by several completions
    /// is tokenized once. `None` when `from` is not such a boundary.
    pub fn encode_after(&self, text: &str, from: usize) -> Result<Option<Vec<u32>>, String> {
        let mut ids = Vec::new();
        let mut start = 0;
        let matches: Vec<(usize, usize, u32)> = match &self.added {
            Some(trie) => trie.leftmost_find_iter(text).map(|m| (m.start(), m.end(), m.value())).collect(),
            None => Vec::new(),
        };
        for (ms, me, id) in matches.into_iter().chain(std::iter::once((text.len(), text.len(), u32::MAX))) {
            // the segment [start, ms) then the added token [ms, me)
            if ms > from && start < from {
                let (before, after) = (&text[start..from], &text[from..ms]);
                let piece_start = after.starts_with([' ', '▁']) && !before.ends_with([' ', '▁']);
                if !piece_start {
                    return Ok(None);
                }
                // Mid-segment: no `▁` is prepended there in the full text.
                self.encode_segment(after, from, false, &mut ids, None)?;
            } else if start >= from {
                self.encode_segment(&text[start..ms], start, true, &mut ids, None)?;
            }
            if ms < from && me > from {
                return Ok(None); // an added token straddles the boundary
            }
            if ms >= from && id != u32::MAX {
                ids.push(id);
            }
            start = me;
        }
        Ok(Some(ids))
    }

    /// `may_prepend`: false for the tail of a segment that started earlier in the text.
    fn encode_segment(
        &self,
        segment: &str,
        base: usize,
        may_prepend: bool,
        ids: &mut Vec<u32>,
        mut offsets: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), String> {
        if segment.is_empty() {
            return Ok(());
        }
        // Metaspace prepends `▁` unless the segment already starts with one (a space, after
        // replacement); `first` only for the segment that starts the text.
        let starts_with_space = segment.starts_with(' ') || segment.starts_with('▁');
        let mut prepend = may_prepend
            && !starts_with_space
            && match self.prepend {
                Prepend::Never => false,
                Prepend::First => base == 0,
                Prepend::Always => true,
            };
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
                self.push_piece(&segment[piece_start..i], prepend, base + piece_start, ids, offsets.as_deref_mut())?;
                prepend = false;
                piece_start = i;
            }
            // Continuation bytes of other multi-byte chars count as "not a space", as the char does.
            prev_space = space;
            i += width;
        }
        self.push_piece(&segment[piece_start..], prepend, base + piece_start, ids, offsets)
    }

    fn push_piece(
        &self,
        piece: &str,
        prepend: bool,
        base: usize,
        ids: &mut Vec<u32>,
        offsets: Option<&mut Vec<(usize, usize)>>,
    ) -> Result<(), String> {
        let cache = if prepend { &self.prepended } else { &self.plain };
        let mut offsets = offsets;
        let emit = |entry: &Entry, ids: &mut Vec<u32>, offsets: Option<&mut Vec<(usize, usize)>>| match offsets {
            None => ids.extend(entry.chunks_exact(3).map(|t| t[0])),
            Some(o) => {
                for t in entry.chunks_exact(3) {
                    ids.push(t[0]);
                    o.push((base + t[1] as usize, base + t[2] as usize));
                }
            }
        };
        if cache.with(piece, |entry| emit(entry, ids, offsets.as_deref_mut())).is_some() {
            return Ok(());
        }
        let entry = self.tokenize_piece(piece, prepend)?;
        emit(&entry, ids, offsets);
        cache.insert(piece, entry);
        Ok(())
    }

    /// Tokenizes one piece with the BPE model and maps offsets from the normalized piece back
    /// to the original bytes the way the crate's alignments do: every normalized byte aligns to
    /// the original character it came from (a space became a 3-byte `▁`; a prepended `▁` aligns
    /// to the first character), and a token spans from its first byte's character start to its
    /// last byte's character end.
    fn tokenize_piece(&self, piece: &str, prepend: bool) -> Result<Entry, String> {
        let mut normalized = String::with_capacity(piece.len() + 3);
        let mut align: Vec<(u32, u32)> = Vec::with_capacity(piece.len() + 3);
        if prepend {
            let first = piece.chars().next().map_or(0, char::len_utf8) as u32;
            normalized.push('▁');
            align.extend([(0, first); 3]);
        }
        let mut o = 0u32;
        for c in piece.chars() {
            let ol = c.len_utf8() as u32;
            if c == ' ' {
                normalized.push('▁');
                align.extend([(o, o + 1); 3]);
            } else {
                normalized.push(c);
                align.extend(std::iter::repeat_n((o, o + ol), ol as usize));
            }
            o += ol;
        }
        let tokens = self.model.tokenize(&normalized).map_err(|e| e.to_string())?;
        let mut entry = Vec::with_capacity(tokens.len() * 3);
        for t in tokens {
            let (s, e) = t.offsets;
            let (start, end) = if e > s { (align[s].0, align[e - 1].1) } else { (align.get(s).map_or(o, |a| a.0), align.get(s).map_or(o, |a| a.0)) };
            entry.extend_from_slice(&[t.id, start, end]);
        }
        Ok(entry.into_boxed_slice())
    }
}
