//! The Python binding of alignlib-core, and nothing more: convert arguments, release the GIL,
//! call the core, convert results back, map errors to alignlib's exception classes.
//!
//! Columns arrive as Arrow buffers (bytes objects the Python side takes from pyarrow without
//! copying the text); results leave as flat little-endian buffers that become Arrow list arrays.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use alignlib_core as core;
use core::{ChatColumn, Column, StrColumn};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

/// Runs `f` without the GIL; a panic in the core becomes a RuntimeError instead of unwinding
/// into the interpreter.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> PyResult<T> {
    py.detach(|| catch_unwind(AssertUnwindSafe(f))).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into());
        PyRuntimeError::new_err(format!("alignlib internal error (please report): {msg}"))
    })
}

/// The alignlib exception for a bad row, with `row`, `field` and `reason` attributes.
fn row_error(py: Python<'_>, e: core::RowError) -> PyErr {
    let class = match e.issue.kind {
        core::IssueKind::Template => "TemplateError",
        core::IssueKind::Tokenizer => "TokenizerError",
        _ => "DataError",
    };
    let built = (|| -> PyResult<PyErr> {
        let cls = PyModule::import(py, "alignlib.errors")?.getattr(class)?;
        let value = cls.call1((e.to_string(), e.row, e.issue.field.clone(), e.issue.kind.as_str()))?;
        Ok(PyErr::from_value(value))
    })();
    built.unwrap_or_else(|err| err)
}

fn setup_error(e: core::SetupError) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn le_i64(bytes: &[u8]) -> Vec<i64> {
    bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect()
}

fn le_u32(bytes: &[u8]) -> Vec<u32> {
    bytes.chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect()
}

fn le_i32(bytes: &[u8]) -> Vec<i32> {
    bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Little-endian bytes of `values`, written straight into a new bytes object (one copy).
fn to_bytes<'py, T: Copy, const N: usize>(
    py: Python<'py>,
    values: &[T],
    f: impl Fn(T) -> [u8; N],
) -> PyResult<Bound<'py, PyBytes>> {
    PyBytes::new_with(py, values.len() * N, |buf| {
        for (chunk, &v) in buf.chunks_exact_mut(N).zip(values) {
            chunk.copy_from_slice(&f(v));
        }
        Ok(())
    })
}

fn usize_bytes<'py>(py: Python<'py>, values: &[usize]) -> PyResult<Bound<'py, PyBytes>> {
    to_bytes(py, values, |v| (v as i64).to_le_bytes())
}

/// A string column as sent from Python: (offsets: int64 bytes, data bytes, validity: uint8
/// bytes or None). Offsets are copied (8 bytes a row); text is borrowed.
struct RawStr {
    offsets: Vec<i64>,
    data: Py<PyBytes>,
    validity: Option<Py<PyBytes>>,
}

impl RawStr {
    fn parse(t: &Bound<'_, PyAny>) -> PyResult<Self> {
        let (offsets, data, validity): (Bound<'_, PyBytes>, Bound<'_, PyBytes>, Option<Bound<'_, PyBytes>>) = t.extract()?;
        Ok(Self { offsets: le_i64(offsets.as_bytes()), data: data.unbind(), validity: validity.map(Bound::unbind) })
    }

    fn view<'a>(&'a self, py: Python<'a>) -> StrColumn<'a> {
        StrColumn {
            offsets: &self.offsets,
            data: self.data.as_bytes(py),
            validity: self.validity.as_ref().map(|v| v.as_bytes(py)),
        }
    }
}

/// ("text", str column) or ("chat", list offsets, list validity, message validity, roles, contents).
enum RawColumn {
    Text(RawStr),
    Chat { offsets: Vec<i64>, validity: Option<Py<PyBytes>>, message_validity: Option<Py<PyBytes>>, roles: RawStr, contents: RawStr },
}

impl RawColumn {
    fn parse(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        let t = obj.cast::<PyTuple>()?;
        let kind: String = t.get_item(0)?.extract()?;
        match kind.as_str() {
            "text" => Ok(RawColumn::Text(RawStr::parse(&t.get_item(1)?)?)),
            "chat" => {
                let offsets: Bound<'_, PyBytes> = t.get_item(1)?.extract()?;
                let validity: Option<Bound<'_, PyBytes>> = t.get_item(2)?.extract()?;
                let message_validity: Option<Bound<'_, PyBytes>> = t.get_item(3)?.extract()?;
                Ok(RawColumn::Chat {
                    offsets: le_i64(offsets.as_bytes()),
                    validity: validity.map(Bound::unbind),
                    message_validity: message_validity.map(Bound::unbind),
                    roles: RawStr::parse(&t.get_item(4)?)?,
                    contents: RawStr::parse(&t.get_item(5)?)?,
                })
            }
            other => Err(PyValueError::new_err(format!("unknown column kind {other:?}"))),
        }
    }

    fn view<'a>(&'a self, py: Python<'a>) -> Column<'a> {
        match self {
            RawColumn::Text(s) => Column::Text(s.view(py)),
            RawColumn::Chat { offsets, validity, message_validity, roles, contents } => Column::Chat(ChatColumn {
                offsets,
                validity: validity.as_ref().map(|v| v.as_bytes(py)),
                message_validity: message_validity.as_ref().map(|v| v.as_bytes(py)),
                roles: roles.view(py),
                contents: contents.view(py),
            }),
        }
    }
}

fn skipped_list<'py>(py: Python<'py>, skipped: &[core::RowError]) -> PyResult<Bound<'py, PyList>> {
    let items: Vec<(usize, String, &str, String)> =
        skipped.iter().map(|e| (e.row, e.issue.field.clone(), e.issue.kind.as_str(), e.issue.message.clone())).collect();
    PyList::new(py, items)
}

/// A tokenizer.json plus its chat template and the special tokens the template sees.
#[pyclass(frozen, module = "alignlib._native", name = "NativeTokenizer")]
struct NativeTokenizer {
    inner: Arc<core::ChatTokenizer>,
}

#[pymethods]
impl NativeTokenizer {
    #[new]
    #[pyo3(signature = (tokenizer_json, chat_template=None, special_tokens=Vec::new(), eos_token=None, piece_split=None, fuel=Some(core::DEFAULT_FUEL)))]
    fn new(
        py: Python<'_>,
        tokenizer_json: &str,
        chat_template: Option<&str>,
        special_tokens: Vec<(String, String)>,
        eos_token: Option<&str>,
        piece_split: Option<bool>,
        fuel: Option<u64>,
    ) -> PyResult<Self> {
        let json = tokenizer_json.to_owned();
        let text = detached(py, move || core::TextTokenizer::from_json(&json, piece_split))?.map_err(setup_error)?;
        let template = chat_template
            .map(|src| core::ChatTemplate::new(src, special_tokens, fuel))
            .transpose()
            .map_err(|e| setup_error(core::SetupError::Template(e.to_string())))?;
        let eos_id = match eos_token {
            Some(t) => Some(text.token_to_id(t).ok_or_else(|| {
                PyValueError::new_err(format!("eos_token {t:?} is not in the tokenizer's vocabulary"))
            })?),
            None => None,
        };
        Ok(Self { inner: Arc::new(core::ChatTokenizer { text, template, eos_id }) })
    }

    #[getter]
    fn piece_split(&self) -> bool {
        self.inner.text.piece_split()
    }

    #[getter]
    fn fast_path(&self) -> bool {
        self.inner.text.fast_path()
    }

    #[getter]
    fn has_chat_template(&self) -> bool {
        self.inner.template.is_some()
    }

    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.inner.eos_id
    }

    fn vocab_size(&self) -> usize {
        self.inner.text.vocab_size()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.text.token_to_id(token)
    }

    fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.text.id_to_token(id)
    }

    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, py: Python<'_>, ids: Vec<u32>, skip_special_tokens: bool) -> PyResult<String> {
        let inner = Arc::clone(&self.inner);
        detached(py, move || inner.text.decode(&ids, skip_special_tokens))?.map_err(PyValueError::new_err)
    }

    /// Renders one conversation given as parallel role/content lists.
    fn render(&self, py: Python<'_>, roles: Vec<String>, contents: Vec<String>, add_generation_prompt: bool) -> PyResult<String> {
        let inner = Arc::clone(&self.inner);
        let result = detached(py, move || {
            let messages: Vec<core::Message<'_>> =
                roles.iter().zip(&contents).map(|(r, c)| core::Message { role: r, content: c }).collect();
            inner.render(&messages, add_generation_prompt, "messages")
        })?;
        result.map_err(|issue| row_error(py, issue.at_row(0)))
    }

    /// `(ids, byte offsets)` of one text.
    fn encode(&self, py: Python<'_>, text: String, add_special_tokens: bool) -> PyResult<(Vec<u32>, Vec<(usize, usize)>)> {
        let inner = Arc::clone(&self.inner);
        let tokens = detached(py, move || inner.text.encode(&text, add_special_tokens))?.map_err(PyValueError::new_err)?;
        Ok((tokens.ids, tokens.offsets))
    }

    /// Ids of many texts in parallel, as (uint32 values, int64 offsets) buffers.
    fn encode_batch<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        add_special_tokens: bool,
    ) -> PyResult<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)> {
        let inner = Arc::clone(&self.inner);
        let encoded =
            detached(py, move || inner.text.encode_batch_ids(&texts, add_special_tokens))?.map_err(PyValueError::new_err)?;
        let mut values = Vec::new();
        let mut offsets = vec![0usize];
        for ids in &encoded {
            values.extend_from_slice(ids);
            offsets.push(values.len());
        }
        Ok((to_bytes(py, &values, u32::to_le_bytes)?, usize_bytes(py, &offsets)?))
    }
}

fn parse_packing(packing: Option<&str>) -> PyResult<core::Packing> {
    match packing {
        None => Ok(core::Packing::None),
        Some("bfd") => Ok(core::Packing::Bfd),
        Some("wrapped") => Ok(core::Packing::Wrapped),
        Some(other) => Err(PyValueError::new_err(format!("packing must be None, 'bfd' or 'wrapped', not {other:?}"))),
    }
}

fn parse_overflow(overflow: &str) -> PyResult<core::Overflow> {
    match overflow {
        "split" => Ok(core::Overflow::Split),
        "truncate" => Ok(core::Overflow::Truncate),
        other => Err(PyValueError::new_err(format!("overflow must be 'split' or 'truncate', not {other:?}"))),
    }
}

fn packed_dict<'py>(py: Python<'py>, packed: &core::Packed) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("input_ids", to_bytes(py, &packed.ids, u32::to_le_bytes)?)?;
    d.set_item("labels", to_bytes(py, &packed.labels, i32::to_le_bytes)?)?;
    d.set_item("position_ids", to_bytes(py, &packed.position_ids, i32::to_le_bytes)?)?;
    d.set_item("row_offsets", usize_bytes(py, &packed.row_offsets)?)?;
    d.set_item("seq_lengths", to_bytes(py, &packed.seq_lengths, i32::to_le_bytes)?)?;
    d.set_item("seq_offsets", usize_bytes(py, &packed.seq_offsets)?)?;
    let s = &packed.stats;
    let stats = PyDict::new(py);
    for (k, v) in [
        ("documents", s.documents),
        ("documents_split", s.documents_split),
        ("split_pieces", s.split_pieces),
        ("documents_truncated", s.documents_truncated),
        ("tokens_truncated", s.tokens_truncated),
        ("labels_masked_at_splits", s.labels_masked_at_splits),
        ("rows", s.rows),
        ("tokens", s.tokens),
        ("trained_tokens", s.trained_tokens),
        ("capacity", s.capacity),
    ] {
        stats.set_item(k, v)?;
    }
    d.set_item("stats", stats)?;
    Ok(d)
}

/// Tokenizes an SFT table and packs it. `kind` is "messages", "prompt_completion" or "text";
/// `columns` the matching raw columns.
#[pyfunction]
#[pyo3(signature = (tokenizer, kind, columns, *, assistant_only_loss, max_length, packing, overflow, skip_invalid))]
#[allow(clippy::too_many_arguments)]
fn prepare_sft<'py>(
    py: Python<'py>,
    tokenizer: &NativeTokenizer,
    kind: &str,
    columns: Vec<Bound<'py, PyAny>>,
    assistant_only_loss: bool,
    max_length: Option<usize>,
    packing: Option<&str>,
    overflow: &str,
    skip_invalid: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = core::PackOptions { max_length, packing: parse_packing(packing)?, overflow: parse_overflow(overflow)? };
    let raw: Vec<RawColumn> = columns.iter().map(RawColumn::parse).collect::<PyResult<_>>()?;
    let views: Vec<Column<'_>> = raw.iter().map(|c| c.view(py)).collect();
    let input = match (kind, views.as_slice()) {
        ("messages", [m]) => core::SftInput::Messages(*m),
        ("prompt_completion", [p, c]) => core::SftInput::PromptCompletion { prompt: *p, completion: *c },
        ("text", [Column::Text(t)]) => core::SftInput::Text(*t),
        _ => return Err(PyValueError::new_err(format!("bad SFT input kind {kind:?} for {} columns", views.len()))),
    };
    let tok = Arc::clone(&tokenizer.inner);
    let result = detached(py, move || {
        core::tokenize_sft(&tok, &input, assistant_only_loss, skip_invalid).map(|t| (core::pack(&t.docs, opts), t.skipped, t.docs.len()))
    })?;
    let (packed, skipped, _docs) = result.map_err(|e| row_error(py, e))?;
    let d = packed_dict(py, &packed)?;
    d.set_item("skipped", skipped_list(py, &skipped)?)?;
    Ok(d)
}

/// Packs pre-tokenized documents (uint32 ids + int64 offsets, optional int32 labels).
#[pyfunction]
#[pyo3(signature = (ids, offsets, labels, *, max_length, packing, overflow))]
fn pack<'py>(
    py: Python<'py>,
    ids: Bound<'py, PyBytes>,
    offsets: Bound<'py, PyBytes>,
    labels: Option<Bound<'py, PyBytes>>,
    max_length: Option<usize>,
    packing: Option<&str>,
    overflow: &str,
) -> PyResult<Bound<'py, PyDict>> {
    let opts = core::PackOptions { max_length, packing: parse_packing(packing)?, overflow: parse_overflow(overflow)? };
    let (ids, offsets, labels) = (ids.as_bytes(), offsets.as_bytes(), labels.as_ref().map(|l| l.as_bytes()));
    let packed = detached(py, move || {
        let ids = le_u32(ids);
        let offsets: Vec<usize> = le_i64(offsets).into_iter().map(|o| o as usize).collect();
        let labels = match labels {
            Some(l) => le_i32(l),
            None => {
                let mut l: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                for &start in &offsets[..offsets.len().saturating_sub(1)] {
                    if start < l.len() {
                        l[start] = core::IGNORE;
                    }
                }
                l
            }
        };
        let rows = (0..offsets.len().saturating_sub(1) as u32).collect();
        core::pack(&core::Documents { ids, labels, offsets, rows }, opts)
    })?;
    packed_dict(py, &packed)
}

/// Tokenizes preference pairs. `prompt` is None for an implicit prompt.
#[pyfunction]
#[pyo3(signature = (tokenizer, prompt, chosen, rejected, *, max_length, max_prompt_length, skip_invalid))]
#[allow(clippy::too_many_arguments)]
fn prepare_preferences<'py>(
    py: Python<'py>,
    tokenizer: &NativeTokenizer,
    prompt: Option<Bound<'py, PyAny>>,
    chosen: Bound<'py, PyAny>,
    rejected: Bound<'py, PyAny>,
    max_length: Option<usize>,
    max_prompt_length: Option<usize>,
    skip_invalid: bool,
) -> PyResult<Bound<'py, PyDict>> {
    let prompt = prompt.as_ref().map(RawColumn::parse).transpose()?;
    let (chosen, rejected) = (RawColumn::parse(&chosen)?, RawColumn::parse(&rejected)?);
    let input = core::PrefInput {
        prompt: prompt.as_ref().map(|p| p.view(py)),
        chosen: chosen.view(py),
        rejected: rejected.view(py),
    };
    let opts = core::PrefOptions { max_length, max_prompt_length };
    let tok = Arc::clone(&tokenizer.inner);
    let table = detached(py, move || core::tokenize_preferences(&tok, &input, opts, skip_invalid))?
        .map_err(|e| row_error(py, e))?;
    let d = PyDict::new(py);
    for (name, lists) in [("prompt", &table.prompt), ("chosen", &table.chosen), ("rejected", &table.rejected)] {
        d.set_item(format!("{name}_ids"), to_bytes(py, &lists.values, u32::to_le_bytes)?)?;
        d.set_item(format!("{name}_offsets"), usize_bytes(py, &lists.offsets)?)?;
    }
    d.set_item("rows", to_bytes(py, &table.rows, u32::to_le_bytes)?)?;
    let s = &table.stats;
    let stats = PyDict::new(py);
    for (k, v) in [
        ("pairs", s.pairs),
        ("prompts_truncated", s.prompts_truncated),
        ("prompt_tokens_truncated", s.prompt_tokens_truncated),
        ("chosen_truncated", s.chosen_truncated),
        ("chosen_tokens_truncated", s.chosen_tokens_truncated),
        ("rejected_truncated", s.rejected_truncated),
        ("rejected_tokens_truncated", s.rejected_tokens_truncated),
        ("boundary_mismatches", s.boundary_mismatches),
        ("prompt_tokens", s.prompt_tokens),
        ("chosen_tokens", s.chosen_tokens),
        ("rejected_tokens", s.rejected_tokens),
    ] {
        stats.set_item(k, v)?;
    }
    d.set_item("stats", stats)?;
    d.set_item("skipped", skipped_list(py, &table.skipped)?)?;
    Ok(d)
}

/// Sets the worker thread count for this process (None: `ALIGNLIB_NUM_THREADS` or all cores).
#[pyfunction]
#[pyo3(signature = (threads=None))]
fn set_num_threads(threads: Option<usize>) {
    core::pool::set_num_threads(threads);
}

#[pyfunction]
fn num_threads() -> usize {
    core::pool::num_threads()
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<NativeTokenizer>()?;
    m.add_function(wrap_pyfunction!(prepare_sft, m)?)?;
    m.add_function(wrap_pyfunction!(prepare_preferences, m)?)?;
    m.add_function(wrap_pyfunction!(pack, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(num_threads, m)?)?;
    Ok(())
}
