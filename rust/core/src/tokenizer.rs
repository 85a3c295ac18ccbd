//! Tokenization through the `tokenizers` crate, from the same `tokenizer.json` transformers
//! loads, plus an exact speed-up for SentencePiece-style BPE vocabularies.
//!
//! Metaspace BPE tokenizers (Mistral, Llama 2) see a whole text as one "word", so BPE runs over
//! thousands of characters and its per-word cache never hits. When no vocabulary entry has a `▁`
//! right after another character, no merge can ever cross the boundary before such a `▁`:
//! splitting the text there and running BPE on each piece gives the same tokens, and the pieces
//! (words) repeat, so the BPE cache serves most of them. `PieceSplit` adds that split after the
//! tokenizer's own pre-tokenizer; it is enabled only when the vocabulary check at load proves it
//! exact.

use std::str::FromStr;

use tokenizers::models::ModelWrapper;
use tokenizers::pattern::Pattern;
use tokenizers::{
    DecoderWrapper, NormalizerWrapper, Offsets, PostProcessor, PostProcessorWrapper, PreTokenizedString, PreTokenizer,
    PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer, TokenizerBuilder, TokenizerImpl,
};

use crate::error::SetupError;
use crate::piece_cache::PieceEncoder;

const METASPACE: char = '▁';
/// Words cached per thread once pieces are split: a corpus's distinct words, with room to spare.
const PIECE_CACHE_CAPACITY: usize = 500_000;

/// The tokenizer's own pre-tokenizer, then (optionally) a split before every `▁` that follows
/// another character.
#[derive(Clone)]
pub struct PieceSplit {
    inner: Option<PreTokenizerWrapper>,
    split_pieces: bool,
}

struct MetaspaceBoundaries;

impl Pattern for MetaspaceBoundaries {
    fn find_matches(&self, inside: &str) -> tokenizers::Result<Vec<(Offsets, bool)>> {
        // Each `▁` preceded by a non-`▁` character is a "match"; MergedWithNext glues it to the
        // text after it, so pieces start at those `▁`.
        let mut out = Vec::new();
        let mut last = 0;
        let mut prev: Option<char> = None;
        for (i, c) in inside.char_indices() {
            if c == METASPACE && prev.is_some_and(|p| p != METASPACE) {
                if last < i {
                    out.push(((last, i), false));
                }
                out.push(((i, i + c.len_utf8()), true));
                last = i + c.len_utf8();
            }
            prev = Some(c);
        }
        if last < inside.len() {
            out.push(((last, inside.len()), false));
        }
        Ok(out)
    }
}

impl PreTokenizer for PieceSplit {
    fn pre_tokenize(&self, pretokenized: &mut PreTokenizedString) -> tokenizers::Result<()> {
        if let Some(inner) = &self.inner {
            inner.pre_tokenize(pretokenized)?;
        }
        if self.split_pieces {
            pretokenized.split(|_, normalized| normalized.split(MetaspaceBoundaries, SplitDelimiterBehavior::MergedWithNext))?;
        }
        Ok(())
    }
}

type Inner = TokenizerImpl<ModelWrapper, NormalizerWrapper, PieceSplit, PostProcessorWrapper, DecoderWrapper>;

/// Token ids with the byte span of the input each token came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub ids: Vec<u32>,
    pub offsets: Vec<(usize, usize)>,
}

/// A loaded `tokenizer.json`.
pub struct TextTokenizer {
    inner: Inner,
    piece_split: bool,
    /// The direct cached encoder, when this tokenizer's pipeline allows it (see piece_cache.rs).
    fast: Option<PieceEncoder>,
    /// Whether `add_special_tokens=true` adds nothing (no post-processor tokens).
    post_adds_nothing: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer").field("piece_split", &self.piece_split).finish()
    }
}

/// Whether splitting before each `▁` that follows another character is exact for this model:
/// a BPE without dropout whose vocabulary has `▁` and no token with `x▁` (x ≠ `▁`) inside.
pub fn piece_split_is_exact(model: &ModelWrapper) -> bool {
    let ModelWrapper::BPE(bpe) = model else { return false };
    // Dropout is random; a word prefix or suffix would attach to every piece instead of every word.
    if bpe.dropout.is_some() || bpe.continuing_subword_prefix.is_some() || bpe.end_of_word_suffix.is_some() {
        return false;
    }
    let vocab = bpe.get_vocab();
    if !vocab.contains_key(&METASPACE.to_string()) {
        return false;
    }
    vocab.keys().all(|token| {
        let mut prev: Option<char> = None;
        for c in token.chars() {
            if c == METASPACE && prev.is_some_and(|p| p != METASPACE) {
                return false;
            }
            prev = Some(c);
        }
        true
    })
}

impl TextTokenizer {
    /// Loads the contents of a `tokenizer.json`. `piece_split`: `None` enables the exact piece
    /// split when the vocabulary allows it; `Some(false)` never; `Some(true)` demands it.
    pub fn from_json(json: &str, piece_split: Option<bool>) -> Result<Self, SetupError> {
        let tok = Tokenizer::from_str(json).map_err(|e| SetupError::Tokenizer(e.to_string()))?;
        let exact = piece_split_is_exact(tok.get_model());
        let piece_split = match piece_split {
            None => exact,
            Some(false) => false,
            Some(true) if exact => true,
            Some(true) => {
                return Err(SetupError::Tokenizer(
                    "piece splitting was requested but is not exact for this vocabulary".into(),
                ))
            }
        };
        let mut model = tok.get_model().clone();
        if piece_split {
            if let ModelWrapper::BPE(bpe) = &mut model {
                bpe.resize_cache(PIECE_CACHE_CAPACITY);
            }
        }
        // transformers encodes with truncation and padding off unless asked; so do we.
        let inner: Inner = TokenizerBuilder::new()
            .with_model(model)
            .with_normalizer(tok.get_normalizer().cloned())
            .with_pre_tokenizer(Some(PieceSplit { inner: tok.get_pre_tokenizer().cloned(), split_pieces: piece_split }))
            .with_post_processor(tok.get_post_processor().cloned())
            .with_decoder(tok.get_decoder().cloned())
            .with_added_vocabulary(tok.get_added_vocabulary().clone())
            .with_truncation(None)
            .with_padding(None)
            .build()
            .map_err(|e| SetupError::Tokenizer(e.to_string()))?;
        let fast = if piece_split { PieceEncoder::new(&tok) } else { None };
        let post_adds_nothing = match tok.get_post_processor() {
            None => true,
            Some(PostProcessorWrapper::Template(t)) => t.added_tokens(false) == 0,
            Some(_) => false,
        };
        Ok(Self { inner, piece_split, fast, post_adds_nothing })
    }

    /// Whether the direct cached encoder serves this tokenizer.
    pub fn fast_path(&self) -> bool {
        self.fast.is_some()
    }

    fn fast_for(&self, add_special_tokens: bool) -> Option<&PieceEncoder> {
        self.fast.as_ref().filter(|_| !add_special_tokens || self.post_adds_nothing)
    }

    pub fn piece_split(&self) -> bool {
        self.piece_split
    }

    /// Ids and byte offsets of `text`, like `tokenizer(text, add_special_tokens=...)`.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Tokens, String> {
        if let Some(fast) = self.fast_for(add_special_tokens) {
            let mut tokens = Tokens::default();
            fast.encode(text, &mut tokens.ids, Some(&mut tokens.offsets))?;
            return Ok(tokens);
        }
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| e.to_string())?;
        Ok(Tokens { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Ids only: skips offset bookkeeping.
    pub fn encode_ids(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, String> {
        if let Some(fast) = self.fast_for(add_special_tokens) {
            let mut ids = Vec::new();
            fast.encode(text, &mut ids, None)?;
            return Ok(ids);
        }
        let enc = self.inner.encode_fast(text, add_special_tokens).map_err(|e| e.to_string())?;
        Ok(enc.get_ids().to_vec())
    }

    /// The ids `encode_ids(text)` gives after byte `from`, when the direct encoder can prove that
    /// `encode_ids(&text[..from])` is exactly the part before (see `PieceEncoder::encode_after`).
    pub fn encode_ids_after(&self, text: &str, from: usize, add_special_tokens: bool) -> Result<Option<Vec<u32>>, String> {
        match self.fast_for(add_special_tokens) {
            Some(fast) if text.is_char_boundary(from) => fast.encode_after(text, from),
            _ => Ok(None),
        }
    }

    /// Ids of many texts, in parallel on the alignlib pool.
    pub fn encode_batch_ids(&self, texts: &[String], add_special_tokens: bool) -> Result<Vec<Vec<u32>>, String> {
        use rayon::prelude::*;
        crate::pool::pool().install(|| texts.par_iter().map(|t| self.encode_ids(t, add_special_tokens)).collect())
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, String> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Metaspace BPE with merges that could cross a word boundary if the split were wrong.
    fn metaspace_json(extra_token: Option<&str>) -> String {
        let mut vocab = vec!["<unk>", "▁", "a", "b", "▁a", "▁b", "ab", "▁ab", "▁▁", "▁▁a"];
        if let Some(t) = extra_token {
            vocab.push(t);
        }
        let vocab: serde_json::Map<String, serde_json::Value> =
            vocab.iter().enumerate().map(|(i, t)| (t.to_string(), serde_json::json!(i))).collect();
        serde_json::json!({
            "version": "1.0",
            "added_tokens": [{"id": 0, "content": "<unk>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}],
            "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
            "pre_tokenizer": null,
            "post_processor": null,
            "decoder": null,
            "model": {"type": "BPE", "unk_token": "<unk>", "fuse_unk": true, "byte_fallback": false, "vocab": vocab,
                      "merges": [["▁", "a"], ["▁", "b"], ["a", "b"], ["▁a", "b"], ["▁", "▁"], ["▁▁", "a"]]}
        })
        .to_string()
    }

    #[test]
    fn piece_split_is_enabled_only_when_exact() {
        assert!(TextTokenizer::from_json(&metaspace_json(None), None).unwrap().piece_split());
        // "a▁" would let a merge cross the boundary before `▁`.
        assert!(!TextTokenizer::from_json(&metaspace_json(Some("a▁")), None).unwrap().piece_split());
        assert!(TextTokenizer::from_json(&metaspace_json(Some("a▁")), Some(true)).is_err());
    }

    const TRICKY: [&str; 14] = [
        "ab ab  a b", " a", "a  ab b ", "abab</s> ab", "", "  ", "a▁b ▁ab", "é ab ü", "</s></s>a", "ab\n\n  ab",
        "</s> a", "</s>a", "ü", " ü</s>",
    ];

    /// The test vocabulary with byte fallback and `</s>` as an added token, spaces handled by
    /// `normalizer` and `pre_tokenizer`.
    fn fallback_json(normalizer: serde_json::Value, pre_tokenizer: serde_json::Value) -> String {
        let mut json: serde_json::Value = serde_json::from_str(&metaspace_json(None)).unwrap();
        json["normalizer"] = normalizer;
        json["pre_tokenizer"] = pre_tokenizer;
        json["model"]["byte_fallback"] = serde_json::json!(true);
        let vocab = json["model"]["vocab"].as_object_mut().unwrap();
        for b in 0..=255u32 {
            let n = vocab.len();
            vocab.insert(format!("<0x{b:02X}>"), serde_json::json!(n));
        }
        let n = vocab.len();
        vocab.insert("</s>".into(), serde_json::json!(n));
        json["added_tokens"].as_array_mut().unwrap().push(serde_json::json!(
            {"id": n, "content": "</s>", "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}));
        json.to_string()
    }

    fn assert_direct_encoder_matches(json: &str) {
        let fast = TextTokenizer::from_json(json, None).unwrap();
        let plain = TextTokenizer::from_json(json, Some(false)).unwrap();
        assert!(fast.fast_path() && !plain.fast_path());
        for text in TRICKY {
            assert_eq!(fast.encode(text, false).unwrap(), plain.encode(text, false).unwrap(), "{text:?}");
            assert_eq!(fast.encode(text, false).unwrap(), fast.encode(text, false).unwrap(), "cached {text:?}");
        }
    }

    #[test]
    fn encoding_after_a_clean_boundary_continues_the_prefix() {
        let replace = serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        let meta = |scheme: &str| serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false});
        let variants = [
            fallback_json(replace, serde_json::Value::Null),
            fallback_json(serde_json::Value::Null, meta("always")),
            fallback_json(serde_json::Value::Null, meta("first")),
        ];
        let mut clean = 0;
        for json in &variants {
            let tok = TextTokenizer::from_json(json, None).unwrap();
            for text in TRICKY {
                let full = tok.encode_ids(text, false).unwrap();
                for from in (0..=text.len()).filter(|&i| text.is_char_boundary(i)) {
                    if let Some(after) = tok.encode_ids_after(text, from, false).unwrap() {
                        let before = tok.encode_ids(&text[..from], false).unwrap();
                        assert_eq!([before, after].concat(), full, "{text:?} at {from}");
                        clean += 1;
                    }
                }
            }
        }
        assert!(clean > 50, "too few clean boundaries exercised: {clean}");
    }

    #[test]
    fn the_direct_encoder_matches_the_crate_with_a_replace_normalizer() {
        let replace = serde_json::json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
        assert_direct_encoder_matches(&fallback_json(serde_json::json!({"type": "Sequence", "normalizers": [replace]}), serde_json::Value::Null));
    }

    #[test]
    fn the_direct_encoder_matches_the_crate_with_a_metaspace_pre_tokenizer() {
        for scheme in ["always", "first", "never"] {
            let meta = serde_json::json!({"type": "Metaspace", "replacement": "▁", "prepend_scheme": scheme, "split": false});
            assert_direct_encoder_matches(&fallback_json(serde_json::Value::Null, meta));
        }
    }

    #[test]
    fn piece_split_gives_the_same_tokens_and_offsets() {
        let json = metaspace_json(None);
        let fast = TextTokenizer::from_json(&json, None).unwrap();
        let plain = TextTokenizer::from_json(&json, Some(false)).unwrap();
        for text in ["ab ab  a b", " a", "a  ab b ", "abab ab", "", "  "] {
            assert_eq!(fast.encode(text, false).unwrap(), plain.encode(text, false).unwrap(), "{text:?}");
        }
    }
}
