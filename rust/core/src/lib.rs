//! alignlib-core: chat templates, tokenization, loss masks, packing and preference pairs.
//!
//! Pure Rust, no Python: the `alignlib-py` crate is a thin binding over this.

pub mod columns;
pub mod error;
pub mod pack;
pub mod piece_cache;
pub mod pool;
pub mod prefs;
pub mod sft;
pub mod template;
pub mod tokenizer;

pub use columns::{Cell, ChatColumn, Column, StrColumn};
pub use error::{Issue, IssueKind, RowError, SetupError};
pub use pack::{pack, Overflow, PackOptions, PackStats, Packed, Packing};
pub use prefs::{tokenize_preferences, PrefInput, PrefOptions, PrefStats, PrefTable};
pub use sft::{tokenize_sft, ChatTokenizer, Documents, Example, SftInput, SftTokenized, IGNORE};
pub use template::{ChatTemplate, Message, DEFAULT_FUEL};
pub use tokenizer::TextTokenizer;
