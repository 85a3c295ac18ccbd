//! Chat templates rendered the way `transformers` renders them.
//!
//! transformers compiles templates with jinja2's `ImmutableSandboxedEnvironment(trim_blocks=True,
//! lstrip_blocks=True)` plus the `loopcontrols` extension, overrides `tojson` with `json.dumps`,
//! and exposes `raise_exception` and `strftime_now`. Every one of those choices changes bytes in
//! the output, so each is mirrored here.

use std::fmt::Write as _;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Error, ErrorKind, State};

/// One chat message as templates see it: a map with `role` and `content`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub role: &'a str,
    pub content: &'a str,
}

/// Bounds a single render. Templates come from the hub: a hostile one must not spin forever.
pub const DEFAULT_FUEL: u64 = 50_000_000;

const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template together with the variables transformers passes to every render
/// (the tokenizer's named special tokens).
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: Vec<(String, String)>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").field("special_tokens", &self.special_tokens).finish()
    }
}

impl ChatTemplate {
    /// Compiles `source`. `special_tokens` are the (name, value) pairs of the tokenizer's
    /// `special_tokens_map` (bos_token, eos_token, ...), exposed to the template as variables.
    pub fn new(
        source: &str,
        special_tokens: Vec<(String, String)>,
        fuel: Option<u64>,
    ) -> Result<Self, Error> {
        let mut env = Environment::new();
        env.set_syntax(SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).keep_trailing_newline(false).build()?);
        env.set_fuel(fuel);
        env.set_unknown_method_callback(python_methods);
        env.add_filter("tojson", tojson);
        env.add_test("iterable", is_iterable);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned(TEMPLATE_NAME, strip_generation_tags(source))?;
        Ok(Self { env, special_tokens })
    }

    /// Renders `messages`, byte for byte what `tokenizer.apply_chat_template(messages,
    /// tokenize=False, add_generation_prompt=...)` returns.
    pub fn render(&self, messages: &[Message<'_>], add_generation_prompt: bool) -> Result<String, Error> {
        let messages: Vec<Value> = messages
            .iter()
            .map(|m| Value::from_pairs([("role", Value::from(m.role)), ("content", Value::from(m.content))]))
            .collect();
        let mut ctx: Vec<(&str, Value)> = self
            .special_tokens
            .iter()
            .map(|(name, value)| (name.as_str(), Value::from(value.as_str())))
            .collect();
        ctx.push(("messages", Value::from(messages)));
        ctx.push(("add_generation_prompt", Value::from(add_generation_prompt)));
        ctx.push(("tools", Value::from(())));
        ctx.push(("documents", Value::from(())));
        let template = self.env.get_template(TEMPLATE_NAME)?;
        template.render(Value::from_pairs(ctx))
    }
}

/// transformers' `AssistantTracker` extension turns `{% generation %}...{% endgeneration %}` into
/// its body; minijinja has no such tag, so the markers are removed before compiling. Whitespace
/// control markers (`{%-`, `-%}`) on the tags are kept as an empty `{%- if true -%}` block would be:
/// the tags are replaced by a no-op statement carrying the same dashes.
fn strip_generation_tags(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut rest = source;
    while let Some(start) = rest.find("{%") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("%}") else { break };
        let inner = &after[..end];
        let trimmed = inner.trim_matches(|c: char| c == '-' || c == '+' || c.is_whitespace());
        out.push_str(&rest[..start]);
        if trimmed == "generation" || trimmed == "endgeneration" {
            let open = if inner.starts_with('-') { "{%-" } else if inner.starts_with('+') { "{%+" } else { "{%" };
            let close = if inner.ends_with('-') { "-%}" } else if inner.ends_with('+') { "+%}" } else { "%}" };
            // `{% if true %}` / `{% endif %}` render nothing and honour the same whitespace rules.
            let stmt = if trimmed == "generation" { " if true " } else { " endif " };
            write!(out, "{open}{stmt}{close}").unwrap();
        } else {
            out.push_str(&rest[start..start + 2 + end + 2]);
        }
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    out
}

/// jinja2's `is iterable`: strings, lists and dicts are; `none` is not (minijinja says it is,
/// and templates guard `tools | length` with `tools is iterable`).
fn is_iterable(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::String | ValueKind::Seq | ValueKind::Map | ValueKind::Iterable | ValueKind::Bytes)
}

fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(ErrorKind::InvalidOperation, message))
}

/// Python string and dict methods (`.strip()`, `.items()`, ...) through minijinja-contrib, plus a
/// few it lacks that chat templates use.
fn python_methods(state: &mut State, value: &Value, method: &str, args: &[Value]) -> Result<Value, Error> {
    if let (Some(s), "rsplit") = (value.as_str(), method) {
        return rsplit(s, args);
    }
    minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
}

fn rsplit(s: &str, args: &[Value]) -> Result<Value, Error> {
    let sep = args.first().and_then(|v| v.as_str()).map(str::to_owned);
    let maxsplit = args.get(1).and_then(|v| v.as_i64()).unwrap_or(-1);
    let parts: Vec<String> = match sep {
        Some(sep) if !sep.is_empty() => {
            let mut parts: Vec<String> = if maxsplit < 0 {
                s.rsplit(sep.as_str()).map(str::to_owned).collect()
            } else {
                s.rsplitn(maxsplit as usize + 1, sep.as_str()).map(str::to_owned).collect()
            };
            parts.reverse();
            parts
        }
        Some(_) => return Err(Error::new(ErrorKind::InvalidOperation, "empty separator")),
        None => s.split_whitespace().map(str::to_owned).collect(),
    };
    Ok(Value::from(parts))
}

/// `json.dumps(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False)`, as
/// transformers defines `tojson` (jinja2's own escapes HTML characters; this does not).
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: bool = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys: bool = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let indent: Option<String> = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_owned()),
            None => Some(" ".repeat(v.as_i64().unwrap_or(0).max(0) as usize)),
        },
    };
    let (item_sep, key_sep) = match separators {
        Some(seps) if !seps.is_none() => {
            let item = seps.get_item(&Value::from(0))?;
            let key = seps.get_item(&Value::from(1))?;
            (item.as_str().unwrap_or(",").to_owned(), key.as_str().unwrap_or(":").to_owned())
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let mut out = String::new();
    let opts = JsonOptions { ensure_ascii, sort_keys, indent, item_sep, key_sep };
    write_json(&mut out, value, &opts, 0)?;
    Ok(Value::from(out))
}

struct JsonOptions {
    ensure_ascii: bool,
    sort_keys: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
}

fn write_newline(out: &mut String, opts: &JsonOptions, depth: usize) {
    if let Some(indent) = &opts.indent {
        out.push('\n');
        for _ in 0..depth {
            out.push_str(indent);
        }
    }
}

fn write_json(out: &mut String, value: &Value, opts: &JsonOptions, depth: usize) -> Result<(), Error> {
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, value),
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default(), opts.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            write_sequence(out, &items, opts, depth)?;
        }
        ValueKind::Map => {
            let mut entries: Vec<(String, Value)> = Vec::new();
            for key in value.try_iter()? {
                let item = value.get_item(&key)?;
                entries.push((json_key(&key), item));
            }
            if opts.sort_keys {
                entries.sort_by(|a, b| a.0.cmp(&b.0));
            }
            if entries.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            out.push('{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push_str(&opts.item_sep);
                }
                write_newline(out, opts, depth + 1);
                write_json_string(out, key, opts.ensure_ascii);
                out.push_str(&opts.key_sep);
                write_json(out, item, opts, depth + 1)?;
            }
            write_newline(out, opts, depth);
            out.push('}');
        }
        ValueKind::Bytes | ValueKind::Plain | ValueKind::Invalid => {
            return Err(Error::new(
                ErrorKind::InvalidOperation,
                format!("Object of type {} is not JSON serializable", value.kind()),
            ))
        }
        // ValueKind is non-exhaustive.
        _ => write_json_string(out, &value.to_string(), opts.ensure_ascii),
    }
    Ok(())
}

fn write_sequence(out: &mut String, items: &[Value], opts: &JsonOptions, depth: usize) -> Result<(), Error> {
    if items.is_empty() {
        out.push_str("[]");
        return Ok(());
    }
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(&opts.item_sep);
        }
        write_newline(out, opts, depth + 1);
        write_json(out, item, opts, depth + 1)?;
    }
    write_newline(out, opts, depth);
    out.push(']');
    Ok(())
}

fn json_key(key: &Value) -> String {
    match key.kind() {
        ValueKind::String => key.as_str().unwrap_or_default().to_owned(),
        ValueKind::None | ValueKind::Undefined => "null".to_owned(),
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::Number => {
            let mut s = String::new();
            write_number(&mut s, key);
            s
        }
        _ => key.to_string(),
    }
}

/// Python's `repr` of ints and floats (`1.0`, not `1`).
fn write_number(out: &mut String, value: &Value) {
    if value.is_integer() {
        write!(out, "{value}").unwrap();
        return;
    }
    let f = f64::try_from(value.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        write!(out, "{f:.1}").unwrap();
    } else {
        write!(out, "{f}").unwrap();
    }
}

fn write_json_string(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => write!(out, "\\u{:04x}", c as u32).unwrap(),
            c if ensure_ascii && !c.is_ascii() => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    write!(out, "\\u{:04x}", unit).unwrap();
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// `datetime.now().strftime(format)` for the directives chat templates use (dates in system
/// prompts). Time is UTC: templates only ever print the date.
fn strftime_now(format: String) -> Result<Value, Error> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    Ok(Value::from(strftime(&format, secs)))
}

const MONTHS: [&str; 12] = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
];
const WEEKDAYS: [&str; 7] = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

/// Days since 1970-01-01 to a civil (year, month, day), after Howard Hinnant's algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let weekday = (days + 3).rem_euclid(7) as usize; // 1970-01-01 was a Thursday
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let day_of_year: u32 = (1..month).map(|m| days_in_month(year, m)).sum::<u32>() + day;
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('Y') => write!(out, "{year}").unwrap(),
            Some('y') => write!(out, "{:02}", year.rem_euclid(100)).unwrap(),
            Some('m') => write!(out, "{month:02}").unwrap(),
            Some('d') => write!(out, "{day:02}").unwrap(),
            Some('-') => match chars.next() {
                Some('d') => write!(out, "{day}").unwrap(),
                Some('m') => write!(out, "{month}").unwrap(),
                Some(other) => write!(out, "%-{other}").unwrap(),
                None => out.push_str("%-"),
            },
            Some('B') => out.push_str(MONTHS[month as usize - 1]),
            Some('b') => out.push_str(&MONTHS[month as usize - 1][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('H') => write!(out, "{hour:02}").unwrap(),
            Some('M') => write!(out, "{minute:02}").unwrap(),
            Some('S') => write!(out, "{second:02}").unwrap(),
            Some('j') => write!(out, "{day_of_year:03}").unwrap(),
            Some('%') => out.push('%'),
            Some(other) => write!(out, "%{other}").unwrap(),
            None => out.push('%'),
        }
    }
    out
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ZEPHYR: &str = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}";

    fn zephyr() -> ChatTemplate {
        ChatTemplate::new(ZEPHYR, vec![("eos_token".into(), "</s>".into())], Some(DEFAULT_FUEL)).unwrap()
    }

    #[test]
    fn zephyr_turns_end_with_eos_and_newline() {
        let msgs = [Message { role: "user", content: "Hi" }, Message { role: "assistant", content: "Hello" }];
        assert_eq!(zephyr().render(&msgs, false).unwrap(), "<|user|>\nHi</s>\n<|assistant|>\nHello</s>\n");
        assert_eq!(zephyr().render(&msgs[..1], true).unwrap(), "<|user|>\nHi</s>\n<|assistant|>\n");
    }

    #[test]
    fn generation_tags_render_their_body() {
        let src = "{% for m in messages %}{% generation %}[{{ m.content }}]{% endgeneration %}{% endfor %}";
        let t = ChatTemplate::new(src, vec![], None).unwrap();
        assert_eq!(t.render(&[Message { role: "assistant", content: "x" }], false).unwrap(), "[x]");
    }

    #[test]
    fn raise_exception_is_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('nope') }}", vec![], None).unwrap();
        assert!(t.render(&[], false).unwrap_err().to_string().contains("nope"));
    }

    #[test]
    fn fuel_bounds_hostile_loops() {
        let src = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(src, vec![], Some(1_000_000)).unwrap();
        assert!(t.render(&[], false).is_err());
    }

    #[test]
    fn tojson_matches_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'a': [1, 2.0, none, true], 'b': '<é\"\n>'} | tojson }}|{{ [1, {'k': 'v'}] | tojson(indent=2) }}",
            vec![],
            None,
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"a\": [1, 2.0, null, true], \"b\": \"<é\\\"\\n>\"}|[\n  1,\n  {\n    \"k\": \"v\"\n  }\n]"
        );
    }

    #[test]
    fn strftime_formats_known_dates() {
        // 2024-07-26 is a Friday.
        let secs = 1_721_952_000;
        assert_eq!(strftime("%d %b %Y %A %B %j %-d", secs), "26 Jul 2024 Friday July 208 26");
    }

    #[test]
    fn none_is_not_iterable() {
        let t = ChatTemplate::new("{{ tools is iterable }} {{ messages is iterable }} {{ 'x' is iterable }}", vec![], None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "False True True");
    }

    #[test]
    fn rsplit_like_python() {
        let t = ChatTemplate::new("{{ 'a/b/c'.rsplit('/', 1) }}", vec![], None).unwrap();
        assert_eq!(t.render(&[], false).unwrap(), "['a/b', 'c']");
    }
}
