//! Preference pairs for DPO: prompt, chosen and rejected token ids.
//!
//! Conversational pairs render the prompt with the generation prompt; chosen and rejected are
//! the tokens that `render(prompt + completion)` adds beyond the prompt's tokens. No pair is
//! ever dropped for length: the prompt is shortened from the left (to `max_prompt_length`), then
//! the completions from the right, and every cut is counted.

use rayon::prelude::*;

use crate::columns::{Cell, Column};
use crate::error::{Issue, IssueKind, RowError};
use crate::pool;
use crate::sft::{common_prefix_len, ChatTokenizer};
use crate::template::Message;

#[derive(Debug, Clone, Copy)]
pub struct PrefInput<'a> {
    /// `None`: implicit prompt, the longest common prefix of chosen and rejected.
    pub prompt: Option<Column<'a>>,
    pub chosen: Column<'a>,
    pub rejected: Column<'a>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PrefOptions {
    pub max_length: Option<usize>,
    pub max_prompt_length: Option<usize>,
}

/// One tokenized pair and what length limits cut from it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pair {
    pub prompt: Vec<u32>,
    pub chosen: Vec<u32>,
    pub rejected: Vec<u32>,
    pub prompt_cut: usize,
    pub chosen_cut: usize,
    pub rejected_cut: usize,
    /// The prompt's tokens were not a prefix of prompt+completion's tokens (a merge crossed the
    /// boundary); the completion's text was then tokenized on its own.
    pub boundary_mismatch: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrefStats {
    pub pairs: usize,
    pub prompts_truncated: usize,
    pub prompt_tokens_truncated: usize,
    pub chosen_truncated: usize,
    pub chosen_tokens_truncated: usize,
    pub rejected_truncated: usize,
    pub rejected_tokens_truncated: usize,
    pub boundary_mismatches: usize,
    pub prompt_tokens: usize,
    pub chosen_tokens: usize,
    pub rejected_tokens: usize,
}

/// A flat list column: value `i` is `values[offsets[i]..offsets[i+1]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdLists {
    pub values: Vec<u32>,
    pub offsets: Vec<usize>,
}

impl Default for IdLists {
    fn default() -> Self {
        Self { values: Vec::new(), offsets: vec![0] }
    }
}

impl IdLists {
    fn push(&mut self, ids: &[u32]) {
        self.values.extend_from_slice(ids);
        self.offsets.push(self.values.len());
    }
}

#[derive(Debug, Clone, Default)]
pub struct PrefTable {
    pub prompt: IdLists,
    pub chosen: IdLists,
    pub rejected: IdLists,
    /// Input row of each output pair.
    pub rows: Vec<u32>,
    pub stats: PrefStats,
    pub skipped: Vec<RowError>,
}

/// TRL's `extract_prompt`: the prompt is everything before the first message (or character)
/// where chosen and rejected differ; identical completions keep their last element.
fn split_implicit<'a>(chosen: &Cell<'a>, rejected: &Cell<'a>) -> Result<(Cell<'a>, Cell<'a>, Cell<'a>), Issue> {
    match (chosen, rejected) {
        (Cell::Chat(c), Cell::Chat(r)) => {
            let n = c.len().min(r.len());
            if n == 0 {
                return Err(Issue::new(IssueKind::EmptyConversation, "chosen", "chosen and rejected need at least one message"));
            }
            let idx = (0..n).find(|&i| c[i] != r[i]).unwrap_or(n - 1);
            Ok((Cell::Chat(c[..idx].to_vec()), Cell::Chat(c[idx..].to_vec()), Cell::Chat(r[idx..].to_vec())))
        }
        (Cell::Text(c), Cell::Text(r)) => {
            let mut idx = c.char_indices().zip(r.chars()).find(|((_, a), b)| a != b).map_or_else(
                || c.char_indices().zip(r.chars()).last().map_or(0, |((i, _), _)| i),
                |((i, _), _)| i,
            );
            if idx > 0 && c[..idx].ends_with(' ') {
                idx -= 1;
            }
            Ok((Cell::Text(&c[..idx]), Cell::Text(&c[idx..]), Cell::Text(&r[idx..])))
        }
        _ => Err(Issue::new(IssueKind::InvalidValue, "rejected", "chosen and rejected must both be conversations or both be strings")),
    }
}

impl ChatTokenizer {
    /// Tokens of the completion: what tokenizing `prompt + completion` adds beyond the prompt's
    /// own tokens. When a merge crosses the boundary (the prompt's tokens are not a prefix), the
    /// text after the prompt is tokenized on its own, as TRL does, so that prompt + completion
    /// tokens still decode to the full text. Returns (tokens, boundary_mismatch).
    fn completion_tokens(
        &self,
        prompt_text: &str,
        prompt_ids: &[u32],
        full: &str,
        add_special_tokens: bool,
        field: &str,
    ) -> Result<(Vec<u32>, bool), Issue> {
        let encode = |text: &str, special: bool| {
            self.text
                .encode_ids(text, special)
                .map_err(|e| Issue::new(IssueKind::Tokenizer, field, format!("tokenizer failed: {e}")))
        };
        if full.starts_with(prompt_text) {
            // The direct encoder can continue the prompt's tokens without re-tokenizing them.
            let after = self.text.encode_ids_after(full, prompt_text.len(), add_special_tokens);
            if let Some(ids) = after.map_err(|e| Issue::new(IssueKind::Tokenizer, field, format!("tokenizer failed: {e}")))? {
                return Ok((ids, false));
            }
        }
        let ids = encode(full, add_special_tokens)?;
        if ids.starts_with(prompt_ids) {
            return Ok((ids[prompt_ids.len()..].to_vec(), false));
        }
        Ok((encode(&full[common_prefix_len(full, prompt_text)..], false)?, true))
    }

    /// Tokenizes one pair (before length limits).
    pub fn encode_pair(&self, prompt: &Cell<'_>, chosen: &Cell<'_>, rejected: &Cell<'_>) -> Result<Pair, Issue> {
        match (prompt, chosen, rejected) {
            (Cell::Chat(p), Cell::Chat(c), Cell::Chat(r)) => {
                for (field, msgs) in [("chosen", c), ("rejected", r)] {
                    if msgs.is_empty() {
                        return Err(Issue::new(IssueKind::EmptyConversation, field, "completion has no messages"));
                    }
                }
                let prompt_text = self.render(p, true, "prompt")?;
                let prompt_ids = self
                    .text
                    .encode_ids(&prompt_text, false)
                    .map_err(|e| Issue::new(IssueKind::Tokenizer, "prompt", format!("tokenizer failed: {e}")))?;
                let complete = |field: &str, msgs: &[Message<'_>]| -> Result<(Vec<u32>, bool), Issue> {
                    let all: Vec<Message<'_>> = p.iter().chain(msgs.iter()).copied().collect();
                    let full = self.render(&all, false, field)?;
                    self.completion_tokens(&prompt_text, &prompt_ids, &full, false, field)
                };
                let (chosen, m1) = complete("chosen", c)?;
                let (rejected, m2) = complete("rejected", r)?;
                Ok(Pair { prompt: prompt_ids, chosen, rejected, boundary_mismatch: m1 || m2, ..Default::default() })
            }
            (Cell::Text(p), Cell::Text(c), Cell::Text(r)) => {
                let prompt_ids = self
                    .text
                    .encode_ids(p, true)
                    .map_err(|e| Issue::new(IssueKind::Tokenizer, "prompt", format!("tokenizer failed: {e}")))?;
                let complete = |field: &str, text: &str| -> Result<(Vec<u32>, bool), Issue> {
                    let full = format!("{p}{text}");
                    let (mut ids, mismatch) = self.completion_tokens(p, &prompt_ids, &full, true, field)?;
                    if let Some(eos) = self.eos_id {
                        if ids.last() != Some(&eos) {
                            ids.push(eos);
                        }
                    }
                    Ok((ids, mismatch))
                };
                let (chosen, m1) = complete("chosen", c)?;
                let (rejected, m2) = complete("rejected", r)?;
                Ok(Pair { prompt: prompt_ids, chosen, rejected, boundary_mismatch: m1 || m2, ..Default::default() })
            }
            _ => Err(Issue::new(
                IssueKind::InvalidValue,
                "prompt",
                "prompt, chosen and rejected must all be conversations or all be strings",
            )),
        }
    }
}

/// Applies the length limits: prompt from the left, then completions from the right. A prompt
/// that alone would leave no room is cut to half of `max_length`, so no pair is ever emptied.
pub fn fit_pair(pair: &mut Pair, opts: PrefOptions) {
    let longest = pair.chosen.len().max(pair.rejected.len());
    let too_long = opts.max_length.is_none_or(|max| pair.prompt.len() + longest > max);
    if !too_long {
        return;
    }
    let mut keep = pair.prompt.len();
    if let Some(mp) = opts.max_prompt_length {
        keep = keep.min(mp);
    }
    if let Some(max) = opts.max_length {
        if keep >= max {
            keep = max / 2;
        }
    }
    if keep < pair.prompt.len() {
        pair.prompt_cut = pair.prompt.len() - keep;
        pair.prompt.drain(..pair.prompt_cut);
    }
    if let Some(max) = opts.max_length {
        let room = max - pair.prompt.len();
        for (ids, cut) in [(&mut pair.chosen, &mut pair.chosen_cut), (&mut pair.rejected, &mut pair.rejected_cut)] {
            if ids.len() > room {
                *cut = ids.len() - room;
                ids.truncate(room);
            }
        }
    }
}

/// Tokenizes and fits every pair in parallel; bad rows are an error, or skipped when
/// `skip_invalid`.
pub fn tokenize_preferences(
    tok: &ChatTokenizer,
    input: &PrefInput<'_>,
    opts: PrefOptions,
    skip_invalid: bool,
) -> Result<PrefTable, RowError> {
    let n = input.chosen.len();
    let one = |i: usize| -> Result<Pair, Issue> {
        let chosen = input.chosen.require(i, "chosen")?;
        let rejected = input.rejected.require(i, "rejected")?;
        let (prompt, chosen, rejected) = match &input.prompt {
            Some(col) => (col.require(i, "prompt")?, chosen, rejected),
            None => split_implicit(&chosen, &rejected)?,
        };
        let mut pair = tok.encode_pair(&prompt, &chosen, &rejected)?;
        fit_pair(&mut pair, opts);
        Ok(pair)
    };
    let results: Vec<Result<Pair, Issue>> = pool::pool().install(|| (0..n).into_par_iter().map(one).collect());
    let mut table = PrefTable::default();
    for (i, r) in results.into_iter().enumerate() {
        let pair = match r {
            Ok(pair) => pair,
            Err(issue) if skip_invalid => {
                table.skipped.push(issue.at_row(i));
                continue;
            }
            Err(issue) => return Err(issue.at_row(i)),
        };
        let s = &mut table.stats;
        s.pairs += 1;
        s.prompts_truncated += usize::from(pair.prompt_cut > 0);
        s.prompt_tokens_truncated += pair.prompt_cut;
        s.chosen_truncated += usize::from(pair.chosen_cut > 0);
        s.chosen_tokens_truncated += pair.chosen_cut;
        s.rejected_truncated += usize::from(pair.rejected_cut > 0);
        s.rejected_tokens_truncated += pair.rejected_cut;
        s.boundary_mismatches += usize::from(pair.boundary_mismatch);
        s.prompt_tokens += pair.prompt.len();
        s.chosen_tokens += pair.chosen.len();
        s.rejected_tokens += pair.rejected.len();
        table.prompt.push(&pair.prompt);
        table.chosen.push(&pair.chosen);
        table.rejected.push(&pair.rejected);
        table.rows.push(i as u32);
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(p: usize, c: usize, r: usize) -> Pair {
        Pair { prompt: (0..p as u32).collect(), chosen: (0..c as u32).collect(), rejected: (0..r as u32).collect(), ..Default::default() }
    }

    #[test]
    fn pairs_that_fit_are_untouched() {
        let mut p = pair(4, 3, 2);
        fit_pair(&mut p, PrefOptions { max_length: Some(7), max_prompt_length: Some(2) });
        assert_eq!((p.prompt.len(), p.chosen.len(), p.rejected.len()), (4, 3, 2));
    }

    #[test]
    fn prompt_is_cut_from_the_left_then_completions_from_the_right() {
        let mut p = pair(10, 8, 3);
        fit_pair(&mut p, PrefOptions { max_length: Some(12), max_prompt_length: Some(6) });
        assert_eq!(p.prompt, (4..10).collect::<Vec<u32>>());
        assert_eq!(p.chosen, (0..6).collect::<Vec<u32>>());
        assert_eq!((p.prompt_cut, p.chosen_cut, p.rejected_cut), (4, 2, 0));
    }

    #[test]
    fn a_prompt_that_fills_max_length_is_halved_not_dropped() {
        let mut p = pair(30, 5, 5);
        fit_pair(&mut p, PrefOptions { max_length: Some(20), max_prompt_length: None });
        assert_eq!((p.prompt.len(), p.chosen.len()), (10, 5));
    }

    #[test]
    fn implicit_prompt_is_the_common_message_prefix() {
        let u = Message { role: "user", content: "q" };
        let a = Message { role: "assistant", content: "good" };
        let b = Message { role: "assistant", content: "bad" };
        let (p, c, r) = split_implicit(&Cell::Chat(vec![u, a]), &Cell::Chat(vec![u, b])).unwrap();
        assert_eq!((p, c, r), (Cell::Chat(vec![u]), Cell::Chat(vec![a]), Cell::Chat(vec![b])));
    }

    #[test]
    fn implicit_text_prompt_leaves_the_space_to_the_completion() {
        let (p, c, r) = split_implicit(&Cell::Text("Q: A good"), &Cell::Text("Q: A bad")).unwrap();
        assert_eq!((p, c, r), (Cell::Text("Q: A"), Cell::Text(" good"), Cell::Text(" bad")));
    }
}
