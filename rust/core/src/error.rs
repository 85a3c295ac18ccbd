//! Per-row problems. Each names the row, the field and what was expected, so a user can fix the
//! data; with a skip policy the same values are counted in the report instead.

use std::fmt;

/// What went wrong with a row. `as_str` is the key under which skipped rows are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum IssueKind {
    /// A required value is null.
    MissingValue,
    /// A message role outside the known set.
    UnknownRole,
    /// A conversation with no messages.
    EmptyConversation,
    /// Assistant-only loss on a conversation with no assistant turn would train on nothing.
    NoAssistantTurn,
    /// A value of the wrong shape (e.g. chosen/rejected with nothing after the prompt).
    InvalidValue,
    /// The chat template raised, ran out of fuel, or is missing.
    Template,
    /// The tokenizer failed on the text.
    Tokenizer,
}

impl IssueKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssueKind::MissingValue => "missing_value",
            IssueKind::UnknownRole => "unknown_role",
            IssueKind::EmptyConversation => "empty_conversation",
            IssueKind::NoAssistantTurn => "no_assistant_turn",
            IssueKind::InvalidValue => "invalid_value",
            IssueKind::Template => "template_error",
            IssueKind::Tokenizer => "tokenizer_error",
        }
    }
}

/// A problem with one value, before we know which row it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub kind: IssueKind,
    pub field: String,
    pub message: String,
}

impl Issue {
    pub fn new(kind: IssueKind, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { kind, field: field.into(), message: message.into() }
    }

    pub fn at_row(self, row: usize) -> RowError {
        RowError { row, issue: self }
    }
}

/// A problem with one row of the input table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowError {
    pub row: usize,
    pub issue: Issue,
}

impl fmt::Display for RowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "row {}, field `{}`: {}", self.row, self.issue.field, self.issue.message)
    }
}

impl std::error::Error for RowError {}

/// Errors that are not about one row: loading a tokenizer, compiling a template, bad arguments.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("cannot load tokenizer: {0}")]
    Tokenizer(String),
    #[error("cannot compile chat template: {0}")]
    Template(String),
    #[error("{0}")]
    Argument(String),
}
