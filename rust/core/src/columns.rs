//! Borrowed views of Arrow columns: strings, and conversations (lists of role/content structs).
//! The binding fills them from Arrow buffers without copying the text.

use crate::error::{Issue, IssueKind};
use crate::template::Message;

/// Roles a chat template is expected to understand.
pub const KNOWN_ROLES: [&str; 7] = ["system", "user", "assistant", "tool", "developer", "function", "ipython"];

/// An Arrow (large) string column: `offsets` has one more entry than rows.
#[derive(Debug, Clone, Copy)]
pub struct StrColumn<'a> {
    pub offsets: &'a [i64],
    pub data: &'a [u8],
    /// One byte per row, 0 for null; `None` when no value is null.
    pub validity: Option<&'a [u8]>,
}

impl<'a> StrColumn<'a> {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The string at `i`, `None` when null. Arrow strings are UTF-8; a broken buffer is an error,
    /// never undefined behaviour.
    pub fn get(&self, i: usize, field: &str) -> Result<Option<&'a str>, Issue> {
        if self.validity.is_some_and(|v| v.get(i).copied().unwrap_or(0) == 0) {
            return Ok(None);
        }
        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
        let bytes = usize::try_from(start)
            .ok()
            .zip(usize::try_from(end).ok())
            .and_then(|(s, e)| self.data.get(s..e))
            .ok_or_else(|| Issue::new(IssueKind::InvalidValue, field, "string offsets out of bounds"))?;
        std::str::from_utf8(bytes)
            .map(Some)
            .map_err(|e| Issue::new(IssueKind::InvalidValue, field, format!("invalid UTF-8: {e}")))
    }
}

/// A column of conversations: row `i` holds messages `offsets[i]..offsets[i+1]`, each a
/// (role, content) pair taken from the two child columns.
#[derive(Debug, Clone, Copy)]
pub struct ChatColumn<'a> {
    pub offsets: &'a [i64],
    pub validity: Option<&'a [u8]>,
    /// Validity of the message structs themselves.
    pub message_validity: Option<&'a [u8]>,
    pub roles: StrColumn<'a>,
    pub contents: StrColumn<'a>,
}

impl<'a> ChatColumn<'a> {
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The messages of row `i`, validated: no null message, role or content, only known roles.
    /// An empty list is returned as is; whether that is an error depends on the caller.
    pub fn get(&self, i: usize, field: &str) -> Result<Option<Vec<Message<'a>>>, Issue> {
        if self.validity.is_some_and(|v| v.get(i).copied().unwrap_or(0) == 0) {
            return Ok(None);
        }
        let (start, end) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        if end < start || end > self.roles.len() || end > self.contents.len() {
            return Err(Issue::new(IssueKind::InvalidValue, field, "message offsets out of bounds"));
        }
        let mut messages = Vec::with_capacity(end - start);
        for (k, j) in (start..end).enumerate() {
            let at = |what: &str| format!("{field}[{k}]{what}");
            if self.message_validity.is_some_and(|v| v.get(j).copied().unwrap_or(0) == 0) {
                return Err(Issue::new(IssueKind::MissingValue, at(""), "message is null; expected {role, content}"));
            }
            let role = self.roles.get(j, &at(".role"))?.ok_or_else(|| {
                Issue::new(IssueKind::MissingValue, at(".role"), "role is null; expected one of system, user, assistant, tool")
            })?;
            if !KNOWN_ROLES.contains(&role) {
                return Err(Issue::new(
                    IssueKind::UnknownRole,
                    at(".role"),
                    format!("unknown role {role:?}; expected one of {}", KNOWN_ROLES.join(", ")),
                ));
            }
            let content = self.contents.get(j, &at(".content"))?.ok_or_else(|| {
                Issue::new(IssueKind::MissingValue, at(".content"), "content is null; expected a string")
            })?;
            messages.push(Message { role, content });
        }
        Ok(Some(messages))
    }
}

/// A column that holds either plain strings or conversations.
#[derive(Debug, Clone, Copy)]
pub enum Column<'a> {
    Text(StrColumn<'a>),
    Chat(ChatColumn<'a>),
}

/// One value of a [`Column`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell<'a> {
    Text(&'a str),
    Chat(Vec<Message<'a>>),
}

impl<'a> Column<'a> {
    pub fn len(&self) -> usize {
        match self {
            Column::Text(c) => c.len(),
            Column::Chat(c) => c.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_chat(&self) -> bool {
        matches!(self, Column::Chat(_))
    }

    /// The non-null value at row `i`; null is a `MissingValue` issue naming `field`.
    pub fn require(&self, i: usize, field: &str) -> Result<Cell<'a>, Issue> {
        let missing = || Issue::new(IssueKind::MissingValue, field, "value is null");
        match self {
            Column::Text(c) => c.get(i, field)?.map(Cell::Text).ok_or_else(missing),
            Column::Chat(c) => c.get(i, field)?.map(Cell::Chat).ok_or_else(missing),
        }
    }
}
