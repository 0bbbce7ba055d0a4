//! The jaq interpreter, for every expression (or record) the fast path does not cover
//! (pure; no I/O: module loading is disabled).

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;

use jaq_core::load::{self, Arena, File, Loader};
use jaq_core::{Compiler, Ctx, Vars, compile, data::JustLut};
use jaq_json::{Num, Val};

use super::super::value::{Object, Value};

/// Values nested deeper than this cannot leave jaq (guards the recursive writers).
const MAX_DEPTH: usize = 512;

/// Native jaq functions pipelines may not call.
const EXCLUDED_FUNCTIONS: [&str; 3] = ["env", "input", "inputs"];

/// An expression compiled by jaq (with the jq standard library of jaq-std and jaq-json).
pub(crate) struct JaqProgram {
    filter: jaq_core::Filter<JustLut<Val>>,
}

impl std::fmt::Debug for JaqProgram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JaqProgram")
    }
}

impl JaqProgram {
    /// Parses and compiles `code`; the error is a one-line human description.
    pub(crate) fn compile(code: &str) -> Result<Self, String> {
        let defs = jaq_core::defs()
            .chain(jaq_std::defs())
            .chain(jaq_json::defs());
        // `env` would hand the worker's environment (storage credentials) to expressions.
        let funs = jaq_core::funs()
            .chain(jaq_std::funs())
            .chain(jaq_json::funs())
            .filter(|(name, _, _)| !EXCLUDED_FUNCTIONS.contains(name));
        let loader = Loader::new(defs);
        let arena = Arena::default();
        let modules = loader
            .load(&arena, File { code, path: () })
            .map_err(|errors| describe_load_errors(code, errors))?;
        let filter = Compiler::default()
            .with_funs(funs)
            .compile(modules)
            .map_err(describe_compile_errors)?;
        Ok(Self { filter })
    }

    /// Runs the program on `input`, handing each output to `sink` until it returns `false`.
    /// Returns the first error (jq error, non-JSON output, `halt`, a panic inside jaq).
    pub(crate) fn run(
        &self,
        input: &Value<'_>,
        mut sink: impl FnMut(Value<'static>) -> bool,
    ) -> Result<(), String> {
        let input = to_val(input);
        // A bug in the interpreter must cost one record, not the worker.
        let run = std::panic::catch_unwind(AssertUnwindSafe(move || {
            let ctx = Ctx::<JustLut<Val>>::new(&self.filter.lut, Vars::new([]));
            for output in self.filter.id.run((ctx, input)) {
                let value = match output {
                    Ok(value) => from_val(&value, 0)?,
                    Err(exception) => {
                        return Err(match exception.get_err() {
                            Ok(error) => truncate(error.to_string()),
                            // `halt` and `halt_error` must not stop the worker.
                            Err(_) => "halt is not supported in pipelines".to_owned(),
                        });
                    }
                };
                if !sink(value) {
                    break;
                }
            }
            Ok(())
        }));
        run.unwrap_or_else(|_| Err("the jq interpreter panicked".to_owned()))
    }
}

/// Error messages embed values; keep them short enough for logs and record headers.
fn truncate(mut message: String) -> String {
    const MAX: usize = 300;
    if message.len() > MAX {
        let mut end = MAX;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str("...");
    }
    message
}

/// Converts a pipeline value to a jaq value.
pub(crate) fn to_val(value: &Value<'_>) -> Val {
    match value {
        Value::Null => Val::Null,
        Value::Bool(b) => Val::Bool(*b),
        Value::Int(i) => isize::try_from(*i).map_or(Val::Num(Num::Float(*i as f64)), Val::from),
        Value::Float(f) => Val::from(*f),
        Value::Str(s) => Val::from(s.to_string()),
        Value::Arr(items) => items.iter().map(to_val).collect(),
        Value::Obj(entries) => Val::obj(
            entries
                .iter()
                .map(|(k, v)| (Val::from(k.to_string()), to_val(v)))
                .collect::<jaq_json::Map>(),
        ),
    }
}

/// Converts a jaq value to a pipeline value; fails for values JSON cannot hold.
pub(crate) fn from_val(value: &Val, depth: usize) -> Result<Value<'static>, String> {
    if depth > MAX_DEPTH {
        return Err(format!("output nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match value {
        Val::Null => Value::Null,
        Val::Bool(b) => Value::Bool(*b),
        Val::Num(n) => from_num(n),
        Val::TStr(bytes) | Val::BStr(bytes) => Value::Str(lossy(bytes)),
        Val::Arr(items) => Value::Arr(
            items
                .iter()
                .map(|v| from_val(v, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Val::Obj(entries) => {
            let mut object = Object::with_capacity(entries.len());
            for (key, item) in entries.iter() {
                let key = match key {
                    Val::TStr(bytes) | Val::BStr(bytes) => lossy(bytes),
                    other => return Err(truncate(format!("object key {other} is not a string"))),
                };
                object.push((key, from_val(item, depth + 1)?));
            }
            Value::Obj(object)
        }
    })
}

fn lossy(bytes: &[u8]) -> Cow<'static, str> {
    Cow::Owned(String::from_utf8_lossy(bytes).into_owned())
}

/// Integers that fit `i64` stay integers; big integers and decimals become floats.
fn from_num(n: &Num) -> Value<'static> {
    if let Some(i) = n.as_isize() {
        return Value::Int(i as i64);
    }
    match n {
        Num::Float(f) => Value::Float(*f),
        Num::Dec(text) => Value::Float(text.parse().unwrap_or(f64::NAN)),
        other => Value::Float(other.to_string().parse().unwrap_or(f64::NAN)),
    }
}

fn describe_load_errors<P>(code: &str, errors: load::Errors<&str, P>) -> String {
    let mut parts = Vec::new();
    for (_file, error) in errors {
        match error {
            load::Error::Io(errors) => {
                parts.extend(
                    errors
                        .into_iter()
                        .map(|(path, e)| format!("cannot load {path}: {e}")),
                );
            }
            load::Error::Lex(errors) => parts.extend(errors.into_iter().map(|(expected, rest)| {
                format!(
                    "expected {} {}",
                    lex_expectation(&expected),
                    position(code, rest)
                )
            })),
            load::Error::Parse(errors) => {
                parts.extend(errors.into_iter().map(|(expected, found)| {
                    format!("expected {} {}", expected.as_str(), position(code, found))
                }))
            }
        }
    }
    if parts.is_empty() {
        "invalid jq".to_owned()
    } else {
        format!("syntax error: {}", parts.join("; "))
    }
}

fn lex_expectation(expected: &load::lex::Expect<&str>) -> &'static str {
    use load::lex::Expect;
    match expected {
        Expect::Digit => "digit",
        Expect::Ident => "identifier",
        Expect::Delim("(") => "closing parenthesis",
        Expect::Delim("[") => "closing bracket",
        Expect::Delim("{") => "closing brace",
        Expect::Delim("\"") => "closing quote",
        Expect::Delim(_) => "closing delimiter",
        Expect::Escape => "string escape sequence",
        Expect::Unicode => "4-digit hexadecimal code point",
        _ => "token",
    }
}

/// Where an error points: "at end of input" or "at offset N (`…`)" when `part` lies in `code`.
fn position(code: &str, part: &str) -> String {
    let start = (part.as_ptr() as usize).checked_sub(code.as_ptr() as usize);
    match start.filter(|s| s + part.len() <= code.len() && !part.is_empty()) {
        Some(start) => {
            let shown: String = code
                .get(start..)
                .unwrap_or_default()
                .chars()
                .take(20)
                .collect();
            format!("at offset {start} (`{shown}`)")
        }
        None => "at end of input".to_owned(),
    }
}

fn describe_compile_errors<P>(errors: compile::Errors<&str, P>) -> String {
    let parts: Vec<String> = errors
        .into_iter()
        .flat_map(|(_file, errors)| errors)
        .map(|(name, undefined)| match undefined {
            compile::Undefined::Filter(arity) => format!("undefined filter {name}/{arity}"),
            compile::Undefined::Var => format!("undefined variable {name}"),
            compile::Undefined::Label => format!("undefined label {name}"),
            compile::Undefined::Mod => format!("undefined module {name}"),
            _ => format!("undefined symbol {name}"),
        })
        .collect();
    if parts.is_empty() {
        "invalid jq".to_owned()
    } else {
        parts.join("; ")
    }
}
