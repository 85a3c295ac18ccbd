//! SFT examples: render, tokenize, and label the tokens the model is trained on.
//!
//! Assistant-only labels work for any template, with no `{% generation %}` tags: the span of
//! assistant message `i` is what `render(messages[:i+1])` adds beyond
//! `render(messages[:i], add_generation_prompt=True)` — exactly what the model must generate,
//! end-of-turn token included. If the latter is not a prefix, `render(messages[:i])` is used.
//! A token is trained iff its first byte lies in a span.

use rayon::prelude::*;

use crate::columns::{Cell, Column, StrColumn};
use crate::error::{Issue, IssueKind, RowError};
use crate::pool;
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::{TextTokenizer, Tokens};

/// Label of a token the loss ignores (PyTorch's `ignore_index`).
pub const IGNORE: i32 = -100;

/// A tokenizer with its chat template and the special tokens the pipeline needs.
#[derive(Debug)]
pub struct ChatTokenizer {
    pub text: TextTokenizer,
    pub template: Option<ChatTemplate>,
    pub eos_id: Option<u32>,
}

/// One tokenized document: ids and labels of the same length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
}

impl ChatTokenizer {
    pub fn render(&self, messages: &[Message<'_>], add_generation_prompt: bool, field: &str) -> Result<String, Issue> {
        let template = self.template.as_ref().ok_or_else(|| {
            Issue::new(IssueKind::Template, field, "the tokenizer has no chat template; pass chat_template=")
        })?;
        template
            .render(messages, add_generation_prompt)
            .map_err(|e| Issue::new(IssueKind::Template, field, format!("chat template failed: {}", describe(&e))))
    }

    fn encode(&self, text: &str, add_special_tokens: bool, field: &str) -> Result<Tokens, Issue> {
        self.text
            .encode(text, add_special_tokens)
            .map_err(|e| Issue::new(IssueKind::Tokenizer, field, format!("tokenizer failed: {e}")))
    }

    /// Byte spans of `full` (the render of all `messages`) that assistant messages at index
    /// `>= first` must generate.
    pub fn assistant_spans(
        &self,
        messages: &[Message<'_>],
        full: &str,
        first: usize,
        field: &str,
    ) -> Result<Vec<(usize, usize)>, Issue> {
        let mut spans = Vec::new();
        let mut cursor = 0;
        for i in first..messages.len() {
            if messages[i].role != "assistant" {
                continue;
            }
            let with = if i + 1 == messages.len() { full.to_owned() } else { self.render(&messages[..=i], false, field)? };
            let start = self.span_start(&messages[..i], &with).ok_or_else(|| {
                Issue::new(
                    IssueKind::Template,
                    format!("{field}[{i}]"),
                    "cannot derive the assistant span: neither render(messages[:i], add_generation_prompt=True) \
                     nor render(messages[:i]) is a prefix of render(messages[:i+1])",
                )
            })?;
            let generated = &with[start..];
            // Usually render(messages[:i+1]) is a prefix of the full render; otherwise the
            // generated text is located after the previous span.
            let at = if full.starts_with(with.as_str()) {
                Some(start)
            } else {
                full.get(cursor..).and_then(|rest| rest.find(generated)).map(|p| p + cursor)
            };
            let at = at.ok_or_else(|| {
                Issue::new(IssueKind::Template, format!("{field}[{i}]"), "the assistant turn's text is not in the full render")
            })?;
            if !generated.is_empty() {
                spans.push((at, at + generated.len()));
            }
            cursor = at + generated.len();
        }
        Ok(spans)
    }

    /// Where the text that message `i` adds begins in `with` (= render(messages[:i+1])).
    fn span_start(&self, before: &[Message<'_>], with: &str) -> Option<usize> {
        // A template may refuse an empty conversation; then the generation starts at 0.
        for add_generation_prompt in [true, false] {
            match self.template.as_ref()?.render(before, add_generation_prompt) {
                Ok(prefix) if with.starts_with(prefix.as_str()) => return Some(prefix.len()),
                Ok(_) => continue,
                Err(_) if before.is_empty() => return Some(0),
                Err(_) => continue,
            }
        }
        None
    }

    /// A conversation. With `assistant_only_loss`, only assistant turns are trained.
    pub fn encode_messages(&self, messages: &[Message<'_>], assistant_only_loss: bool, field: &str) -> Result<Example, Issue> {
        if messages.is_empty() {
            return Err(Issue::new(IssueKind::EmptyConversation, field, "conversation has no messages"));
        }
        if assistant_only_loss && !messages.iter().any(|m| m.role == "assistant") {
            return Err(Issue::new(
                IssueKind::NoAssistantTurn,
                field,
                "no assistant message: assistant-only loss would train on nothing",
            ));
        }
        let full = self.render(messages, false, field)?;
        let tokens = self.encode(&full, false, field)?;
        let labels = if assistant_only_loss {
            labels_in_spans(&tokens, &self.assistant_spans(messages, &full, 0, field)?)
        } else {
            tokens.ids.iter().map(|&id| id as i32).collect()
        };
        Ok(finish(tokens.ids, labels))
    }

    /// A prompt and its completion, both conversations or both strings. With
    /// `completion_only_loss`, only the completion is trained.
    pub fn encode_prompt_completion(
        &self,
        prompt: &Cell<'_>,
        completion: &Cell<'_>,
        completion_only_loss: bool,
    ) -> Result<Example, Issue> {
        let (tokens, boundary) = match (prompt, completion) {
            (Cell::Chat(p), Cell::Chat(c)) => {
                if c.is_empty() {
                    return Err(Issue::new(IssueKind::EmptyConversation, "completion", "completion has no messages"));
                }
                let all: Vec<Message<'_>> = p.iter().chain(c.iter()).copied().collect();
                let full = self.render(&all, false, "completion")?;
                let with_prompt = self.render(p, true, "prompt")?;
                let boundary = if full.starts_with(with_prompt.as_str()) {
                    with_prompt.len()
                } else {
                    let plain = self.render(p, false, "prompt")?;
                    common_prefix_len(&full, &plain)
                };
                (self.encode(&full, false, "completion")?, boundary)
            }
            (Cell::Text(p), Cell::Text(c)) => {
                let full = format!("{p}{c}");
                let mut tokens = self.encode(&full, true, "completion")?;
                self.append_eos(&mut tokens, full.len());
                (tokens, p.len())
            }
            _ => {
                return Err(Issue::new(
                    IssueKind::InvalidValue,
                    "completion",
                    "prompt and completion must both be conversations or both be strings",
                ))
            }
        };
        let labels = if completion_only_loss {
            labels_in_spans(&tokens, &[(boundary, usize::MAX)])
        } else {
            tokens.ids.iter().map(|&id| id as i32).collect()
        };
        Ok(finish(tokens.ids, labels))
    }

    /// Plain text, all trained; the post-processor's special tokens plus EOS, as TRL does.
    pub fn encode_text(&self, text: &str, field: &str) -> Result<Example, Issue> {
        let mut tokens = self.encode(text, true, field)?;
        self.append_eos(&mut tokens, text.len());
        let labels = tokens.ids.iter().map(|&id| id as i32).collect();
        Ok(finish(tokens.ids, labels))
    }

    /// Appends EOS unless the tokens already end with it; it is trained like the text before it.
    fn append_eos(&self, tokens: &mut Tokens, at: usize) {
        if let Some(eos) = self.eos_id {
            if tokens.ids.last() != Some(&eos) {
                tokens.ids.push(eos);
                tokens.offsets.push((at, at));
            }
        }
    }
}

/// jinja-style error text with the template's own message first.
fn describe(e: &minijinja::Error) -> String {
    match e.detail() {
        Some(detail) => detail.to_owned(),
        None => e.to_string(),
    }
}

/// Byte length of the longest common prefix of `a` and `b` (on character boundaries).
pub(crate) fn common_prefix_len(a: &str, b: &str) -> usize {
    a.char_indices().zip(b.chars()).take_while(|((_, x), y)| x == y).last().map_or(0, |((i, c), _)| i + c.len_utf8())
}

/// Labels for `tokens`: a token is trained iff its first byte lies in one of `spans`.
fn labels_in_spans(tokens: &Tokens, spans: &[(usize, usize)]) -> Vec<i32> {
    tokens
        .ids
        .iter()
        .zip(&tokens.offsets)
        .map(|(&id, &(start, _))| if spans.iter().any(|&(s, e)| start >= s && start < e) { id as i32 } else { IGNORE })
        .collect()
}

/// The first token of a document predicts nothing (it has no context), so it is never trained.
fn finish(ids: Vec<u32>, mut labels: Vec<i32>) -> Example {
    if let Some(first) = labels.first_mut() {
        *first = IGNORE;
    }
    Example { ids, labels }
}

/// The columns an SFT table may provide.
#[derive(Debug, Clone, Copy)]
pub enum SftInput<'a> {
    Messages(Column<'a>),
    PromptCompletion { prompt: Column<'a>, completion: Column<'a> },
    Text(StrColumn<'a>),
}

impl SftInput<'_> {
    pub fn len(&self) -> usize {
        match self {
            SftInput::Messages(c) => c.len(),
            SftInput::PromptCompletion { prompt, .. } => prompt.len(),
            SftInput::Text(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Every row's documents, flattened: document `d` is `ids[offsets[d]..offsets[d+1]]` and came
/// from input row `rows[d]`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Documents {
    pub ids: Vec<u32>,
    pub labels: Vec<i32>,
    pub offsets: Vec<usize>,
    pub rows: Vec<u32>,
}

impl Documents {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn from_examples(examples: impl IntoIterator<Item = (u32, Example)>) -> Self {
        let mut docs = Documents { offsets: vec![0], ..Default::default() };
        for (row, ex) in examples {
            docs.ids.extend_from_slice(&ex.ids);
            docs.labels.extend_from_slice(&ex.labels);
            docs.offsets.push(docs.ids.len());
            docs.rows.push(row);
        }
        docs
    }
}

/// Tokenized rows plus the rows that were skipped (only when `skip_invalid`).
#[derive(Debug, Clone, Default)]
pub struct SftTokenized {
    pub docs: Documents,
    pub skipped: Vec<RowError>,
}

/// Tokenizes every row in parallel. Without `skip_invalid`, the first bad row (lowest index)
/// is the error; with it, bad rows are returned in `skipped` and the rest kept in order.
pub fn tokenize_sft(
    tok: &ChatTokenizer,
    input: &SftInput<'_>,
    assistant_only_loss: bool,
    skip_invalid: bool,
) -> Result<SftTokenized, RowError> {
    let n = input.len();
    let one = |i: usize| -> Result<Example, Issue> {
        match input {
            SftInput::Messages(col) => match col.require(i, "messages")? {
                Cell::Chat(msgs) => tok.encode_messages(&msgs, assistant_only_loss, "messages"),
                Cell::Text(_) => Err(Issue::new(IssueKind::InvalidValue, "messages", "expected a list of messages")),
            },
            SftInput::PromptCompletion { prompt, completion } => {
                let p = prompt.require(i, "prompt")?;
                let c = completion.require(i, "completion")?;
                tok.encode_prompt_completion(&p, &c, assistant_only_loss)
            }
            SftInput::Text(col) => {
                let text = col
                    .get(i, "text")?
                    .ok_or_else(|| Issue::new(IssueKind::MissingValue, "text", "value is null; expected a string"))?;
                tok.encode_text(text, "text")
            }
        }
    };
    let results: Vec<Result<Example, Issue>> = pool::pool().install(|| (0..n).into_par_iter().map(one).collect());
    let mut examples = Vec::with_capacity(n);
    let mut skipped = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(ex) => examples.push((i as u32, ex)),
            Err(issue) if skip_invalid => skipped.push(issue.at_row(i)),
            Err(issue) => return Err(issue.at_row(i)),
        }
    }
    Ok(SftTokenized { docs: Documents::from_examples(examples), skipped })
}
