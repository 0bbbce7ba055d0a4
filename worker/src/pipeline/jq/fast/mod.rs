//! The fast path: the common jq shapes compiled to a tree evaluated natively over [`Value`]
//! (pure; no I/O).
//!
//! Every fast expression yields at most one output per input (zero for `select` and
//! `empty`), so evaluation needs no iterator machinery. The semantics mirror jaq's (see
//! `value.rs` for ordering and equality); whatever this module does not implement, or any
//! error, makes it bail out, and the caller re-runs the expression in jaq for that record.
//! So jaq stays the reference: it produces every error message, and the rare value
//! combinations handled here only by bailing still get jaq's answer.

mod compile;
mod write;

use std::borrow::Cow;

use jaq_core::ops::{Cmp, Math};

use super::super::value::{NULL, Object, Value, compare, equal, object_get, object_insert};
use super::super::write::to_jaq_text;

pub(crate) use compile::compile;
pub(crate) use write::{literal_object, write_object};

/// Why the fast path gave up on one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bail {
    /// jaq raises an error here (jaq re-runs to produce its message).
    Error,
    /// A value combination the fast path leaves to jaq (integer overflow, string
    /// repetition, non-string object keys, ...).
    Unsupported,
    /// A string repetition whose result would exceed [`MAX_REPEAT_BYTES`]: the record fails
    /// without running jaq, which would try to allocate it and abort the process.
    TooLarge,
}

/// Largest string a repetition (`"ab" * n`) may produce.
pub(crate) const MAX_REPEAT_BYTES: f64 = 16.0 * 1024.0 * 1024.0;

/// An output: borrowed from the input or the expression, or newly built.
pub(crate) enum Out<'v, 'x> {
    /// Part of the input (or a literal of the expression).
    Ref(&'v Value<'x>),
    /// A new value.
    Own(Value<'x>),
}

impl<'x> Out<'_, 'x> {
    fn get(&self) -> &Value<'x> {
        match self {
            Out::Ref(v) => v,
            Out::Own(v) => v,
        }
    }

    /// The output as an owned value (cloning borrowed parts; borrowed strings stay borrowed).
    pub(crate) fn into_value(self) -> Value<'x> {
        match self {
            Out::Ref(v) => v.clone(),
            Out::Own(v) => v,
        }
    }
}

type Eval<'v, 'x> = Result<Option<Out<'v, 'x>>, Bail>;

/// A compiled fast expression.
#[derive(Debug)]
pub(crate) enum Fast {
    /// `.`
    Id,
    /// `1`, `"a"`, `true`, `null`
    Lit(Value<'static>),
    /// `.a`, `.a[0]?`, `."x"`, `f[.i]`: head, then index steps (optional when `true`).
    Path(Box<Fast>, Vec<(Index, bool)>),
    /// `-f`
    Neg(Box<Fast>),
    /// `f | g`
    Pipe(Box<Fast>, Box<Fast>),
    /// `f + g`, ...
    Math(Box<Fast>, Math, Box<Fast>),
    /// `f == g`, ...
    Cmp(Box<Fast>, Cmp, Box<Fast>),
    /// `f and g`
    And(Box<Fast>, Box<Fast>),
    /// `f or g`
    Or(Box<Fast>, Box<Fast>),
    /// `f // g`
    Alt(Box<Fast>, Box<Fast>),
    /// `if c then t elif ... else e end` (no `else` means `.`)
    If(Vec<(Fast, Fast)>, Box<Fast>),
    /// `try f` and `f?` without `catch`
    Try(Box<Fast>),
    /// `[f, g, ...]`
    Arr(Vec<Fast>),
    /// `{a: f, "b": g, (k): v, c}`
    Obj(Vec<(Key, Fast)>),
    /// `"text \(f) more"`
    Interp(Vec<Piece>),
    /// `select(f)`
    Select(Box<Fast>),
    /// `not`
    Not,
    /// `length`
    Length,
    /// `tostring`
    ToString,
    /// `tonumber`
    ToNumber,
    /// `type`
    Type,
    /// `empty`
    Empty,
}

/// One step of a path.
#[derive(Debug)]
pub(crate) enum Index {
    /// `.name`, `."name"`, `.["name"]`
    Field(Box<str>),
    /// `.[3]`, `.[-1]`
    Elem(i64),
    /// `.[f]`: `f` runs on the path's input.
    Expr(Fast),
}

/// An object key.
#[derive(Debug)]
pub(crate) enum Key {
    /// `a:` or `"a":`
    Lit(Box<str>),
    /// `(f):` or an interpolated string
    Expr(Fast),
}

/// A part of an interpolated string.
#[derive(Debug)]
pub(crate) enum Piece {
    /// Literal text.
    Lit(Box<str>),
    /// `\(f)`, inserted as by `tostring`.
    Expr(Fast),
}

impl Fast {
    /// Evaluates the expression on `input`: `Ok(None)` means no output.
    pub(crate) fn eval<'v, 'x: 'v>(&'x self, input: &'v Value<'x>) -> Eval<'v, 'x> {
        match self {
            Fast::Id => Ok(Some(Out::Ref(input))),
            Fast::Lit(v) => Ok(Some(Out::Ref(v))),
            Fast::Path(head, steps) => eval_path(head, steps, input),
            Fast::Neg(f) => {
                let Some(v) = f.eval(input)? else {
                    return Ok(None);
                };
                Ok(Some(Out::Own(match v.get() {
                    Value::Int(i) => Value::Int(i.checked_neg().ok_or(Bail::Unsupported)?),
                    Value::Float(x) => Value::Float(-x),
                    _ => return Err(Bail::Error),
                })))
            }
            Fast::Pipe(f, g) => match f.eval(input)? {
                None => Ok(None),
                Some(Out::Ref(v)) => g.eval(v),
                Some(Out::Own(v)) => Ok(g.eval(&v)?.map(|o| Out::Own(o.into_value()))),
            },
            Fast::Math(l, op, r) => {
                // Both sides run (jq runs both), so an error on either side is seen.
                let (l, r) = (l.eval(input), r.eval(input));
                let (Some(l), Some(r)) = (l?, r?) else {
                    return Ok(None);
                };
                math(*op, l, r).map(|v| Some(Out::Own(v)))
            }
            Fast::Cmp(l, op, r) => {
                // Both sides run (jq runs both), so an error on either side is seen.
                let (l, r) = (l.eval(input), r.eval(input));
                let (Some(l), Some(r)) = (l?, r?) else {
                    return Ok(None);
                };
                let (l, r) = (l.get(), r.get());
                let result = match op {
                    Cmp::Eq => equal(l, r),
                    Cmp::Ne => !equal(l, r),
                    Cmp::Lt => compare(l, r).is_lt(),
                    Cmp::Le => compare(l, r).is_le(),
                    Cmp::Gt => compare(l, r).is_gt(),
                    Cmp::Ge => compare(l, r).is_ge(),
                };
                Ok(Some(Out::Own(Value::Bool(result))))
            }
            Fast::And(l, r) | Fast::Or(l, r) => {
                // `false and f` / `true or f` stop without running `f`, as in jq.
                let stop = matches!(self, Fast::Or(..));
                let Some(l) = l.eval(input)? else {
                    return Ok(None);
                };
                if l.get().is_truthy() == stop {
                    return Ok(Some(Out::Own(Value::Bool(stop))));
                }
                let Some(r) = r.eval(input)? else {
                    return Ok(None);
                };
                Ok(Some(Out::Own(Value::Bool(r.get().is_truthy()))))
            }
            Fast::Alt(l, r) => match l.eval(input)? {
                Some(v) if v.get().is_truthy() => Ok(Some(v)),
                _ => r.eval(input),
            },
            Fast::If(branches, otherwise) => {
                for (cond, then) in branches {
                    let Some(c) = cond.eval(input)? else {
                        return Ok(None);
                    };
                    if c.get().is_truthy() {
                        return then.eval(input);
                    }
                }
                otherwise.eval(input)
            }
            Fast::Try(f) => match f.eval(input) {
                Err(Bail::Error) => Ok(None),
                other => other,
            },
            Fast::Arr(items) => {
                let mut values = Vec::with_capacity(items.len());
                for item in items {
                    if let Some(v) = item.eval(input)? {
                        values.push(v.into_value());
                    }
                }
                Ok(Some(Out::Own(Value::Arr(values))))
            }
            Fast::Obj(entries) => eval_object(entries, input),
            Fast::Interp(pieces) => {
                let mut text = String::new();
                let mut complete = true;
                for piece in pieces {
                    match piece {
                        Piece::Lit(s) => text.push_str(s),
                        Piece::Expr(f) => match f.eval(input)? {
                            Some(v) => match v.get() {
                                Value::Str(s) => text.push_str(s),
                                other => text.push_str(&to_jaq_text(other)),
                            },
                            None => complete = false,
                        },
                    }
                }
                Ok(complete.then_some(Out::Own(Value::Str(Cow::Owned(text)))))
            }
            Fast::Select(cond) => match cond.eval(input)? {
                Some(c) if c.get().is_truthy() => Ok(Some(Out::Ref(input))),
                _ => Ok(None),
            },
            Fast::Not => Ok(Some(Out::Own(Value::Bool(!input.is_truthy())))),
            Fast::Length => Ok(Some(Out::Own(match input {
                Value::Null => Value::Int(0),
                Value::Bool(_) => return Err(Bail::Error),
                Value::Int(i) => Value::Int(i.checked_abs().ok_or(Bail::Unsupported)?),
                Value::Float(f) => Value::Float(f.abs()),
                Value::Str(s) => Value::Int(count(s.chars().count())?),
                Value::Arr(a) => Value::Int(count(a.len())?),
                Value::Obj(o) => Value::Int(count(o.len())?),
            }))),
            Fast::ToString => Ok(Some(match input {
                Value::Str(_) => Out::Ref(input),
                other => Out::Own(Value::Str(Cow::Owned(to_jaq_text(other)))),
            })),
            Fast::ToNumber => match input {
                Value::Int(_) | Value::Float(_) => Ok(Some(Out::Ref(input))),
                Value::Str(s) => parse_number(s).map(|v| Some(Out::Own(v))),
                _ => Err(Bail::Error),
            },
            Fast::Type => Ok(Some(Out::Own(Value::Str(Cow::Borrowed(input.type_name()))))),
            Fast::Empty => Ok(None),
        }
    }
}

fn count(n: usize) -> Result<i64, Bail> {
    i64::try_from(n).map_err(|_| Bail::Unsupported)
}

fn eval_path<'v, 'x: 'v>(
    head: &'x Fast,
    steps: &'x [(Index, bool)],
    input: &'v Value<'x>,
) -> Eval<'v, 'x> {
    let Some(start) = head.eval(input)? else {
        return Ok(None);
    };
    match start {
        Out::Ref(v) => walk(v, steps, input),
        Out::Own(v) => Ok(walk(&v, steps, input)?.map(|o| Out::Own(o.into_value()))),
    }
}

/// Follows `steps` from `start`; index expressions run on the path's `input`, as in jq.
fn walk<'v, 'x: 'v>(
    start: &'v Value<'x>,
    steps: &'x [(Index, bool)],
    input: &'v Value<'x>,
) -> Eval<'v, 'x> {
    let mut current = start;
    for (step, optional) in steps {
        let found = match step {
            Index::Field(name) => index_field(current, name),
            Index::Elem(i) => index_elem(current, *i),
            Index::Expr(f) => {
                let Some(key) = f.eval(input)? else {
                    return Ok(None);
                };
                match key {
                    Out::Ref(key) => index_value(current, key),
                    // An owned key can only select by value; the result is still borrowed
                    // from `current`.
                    Out::Own(key) => index_value(current, &key),
                }
            }
        };
        current = match found {
            Ok(v) => v,
            Err(Bail::Error) if *optional => return Ok(None),
            Err(bail) => return Err(bail),
        };
    }
    Ok(Some(Out::Ref(current)))
}

fn index_field<'v, 'x>(container: &'v Value<'x>, name: &str) -> Result<&'v Value<'x>, Bail> {
    match container {
        Value::Obj(o) => Ok(object_get(o, name).unwrap_or(&NULL)),
        Value::Null => Ok(&NULL),
        // jaq uses objects as ranges (`{"start": 1}`) on strings and arrays only when the
        // index is an object; a string index on anything else is an error.
        _ => Err(Bail::Error),
    }
}

fn index_elem<'v, 'x>(container: &'v Value<'x>, i: i64) -> Result<&'v Value<'x>, Bail> {
    match container {
        Value::Arr(items) => {
            let position = if i >= 0 {
                usize::try_from(i).ok()
            } else {
                usize::try_from(i.unsigned_abs())
                    .ok()
                    .and_then(|back| items.len().checked_sub(back))
            };
            Ok(position.and_then(|p| items.get(p)).unwrap_or(&NULL))
        }
        Value::Null => Ok(&NULL),
        // jaq looks numbers up as keys of objects (never found).
        Value::Obj(_) => Ok(&NULL),
        _ => Err(Bail::Error),
    }
}

fn index_value<'v, 'x>(container: &'v Value<'x>, key: &Value<'_>) -> Result<&'v Value<'x>, Bail> {
    match (container, key) {
        (Value::Null, _) => Ok(&NULL),
        (_, Value::Str(name)) => index_field(container, name),
        (_, Value::Int(i)) => index_elem(container, *i),
        (Value::Obj(_), Value::Obj(_) | Value::Arr(_)) => Ok(&NULL),
        (Value::Obj(_), _) => Ok(&NULL),
        // Slices by `{"start", "end"}` objects and `indices` by arrays stay with jaq.
        (Value::Arr(_) | Value::Str(_), Value::Obj(_)) | (Value::Arr(_), Value::Arr(_)) => {
            Err(Bail::Unsupported)
        }
        _ => Err(Bail::Error),
    }
}

fn eval_object<'v, 'x: 'v>(entries: &'x [(Key, Fast)], input: &'v Value<'x>) -> Eval<'v, 'x> {
    let mut object = Object::with_capacity(entries.len());
    let mut complete = true;
    for (key, value) in entries {
        let key = match key {
            Key::Lit(name) => Some(Cow::Borrowed(&**name)),
            Key::Expr(f) => match f.eval(input)? {
                Some(Out::Ref(Value::Str(s))) => Some(s.clone()),
                Some(Out::Own(Value::Str(s))) => Some(s),
                // jaq builds objects with non-string keys, which are not JSON.
                Some(_) => return Err(Bail::Unsupported),
                None => None,
            },
        };
        let value = value.eval(input)?;
        match (key, value) {
            (Some(k), Some(v)) if complete => object_insert(&mut object, k, v.into_value()),
            _ => complete = false,
        }
    }
    Ok(complete.then_some(Out::Own(Value::Obj(object))))
}

/// `tonumber` on strings in strict JSON number syntax; anything else is left to jaq.
fn parse_number(text: &str) -> Result<Value<'static>, Bail> {
    let bytes = text.as_bytes();
    let mut i = usize::from(bytes.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while bytes.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    let int_start = i;
    let int_digits = digits(&mut i);
    if int_digits == 0 || (int_digits > 1 && bytes[int_start] == b'0') {
        return Err(Bail::Unsupported);
    }
    let mut integral = true;
    if bytes.get(i) == Some(&b'.') {
        i += 1;
        integral = false;
        if digits(&mut i) == 0 {
            return Err(Bail::Unsupported);
        }
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        integral = false;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return Err(Bail::Unsupported);
        }
    }
    if i != bytes.len() {
        return Err(Bail::Unsupported);
    }
    if integral {
        text.parse().map(Value::Int).map_err(|_| Bail::Unsupported)
    } else {
        text.parse()
            .map(Value::Float)
            .map_err(|_| Bail::Unsupported)
    }
}

/// Arithmetic as jaq does it; combinations jaq supports but this does not are `Unsupported`.
fn math<'x>(op: Math, l: Out<'_, 'x>, r: Out<'_, 'x>) -> Result<Value<'x>, Bail> {
    use Value::{Arr, Float, Int, Null, Obj, Str};
    let unsupported = Err(Bail::Unsupported);
    Ok(match (op, l.get(), r.get()) {
        (Math::Add, Null, _) => r.into_value(),
        (Math::Add, _, Null) => l.into_value(),
        (_, Int(x), Int(y)) => {
            let (x, y) = (*x, *y);
            Int(match op {
                Math::Add => x.checked_add(y).ok_or(Bail::Unsupported)?,
                Math::Sub => x.checked_sub(y).ok_or(Bail::Unsupported)?,
                Math::Mul => x.checked_mul(y).ok_or(Bail::Unsupported)?,
                Math::Div => return Ok(Float(x as f64 / y as f64)),
                Math::Rem if y == 0 => return Err(Bail::Error),
                Math::Rem => x.checked_rem(y).unwrap_or(0),
            })
        }
        (_, Int(_) | Float(_), Int(_) | Float(_)) => {
            let as_f64 = |v: &Value<'_>| match v {
                Int(i) => *i as f64,
                Float(f) => *f,
                _ => f64::NAN,
            };
            let (x, y) = (as_f64(l.get()), as_f64(r.get()));
            Float(match op {
                Math::Add => x + y,
                Math::Sub => x - y,
                Math::Mul => x * y,
                Math::Div => x / y,
                Math::Rem => x % y,
            })
        }
        (Math::Add, Str(x), Str(y)) => {
            let mut s = String::with_capacity(x.len() + y.len());
            s.push_str(x);
            s.push_str(y);
            Str(Cow::Owned(s))
        }
        (Math::Add, Arr(_), Arr(y)) => {
            let y = y.clone();
            let Arr(mut x) = l.into_value() else {
                return unsupported;
            };
            x.extend(y);
            Arr(x)
        }
        (Math::Add, Obj(_), Obj(y)) => {
            let y = y.clone();
            let Obj(mut x) = l.into_value() else {
                return unsupported;
            };
            for (k, v) in y {
                object_insert(&mut x, k, v);
            }
            Obj(x)
        }
        (Math::Mul, Str(text), Int(_) | Float(_)) | (Math::Mul, Int(_) | Float(_), Str(text)) => {
            let times = match (l.get(), r.get()) {
                (Int(n), _) | (_, Int(n)) => *n as f64,
                (Float(n), _) | (_, Float(n)) => *n,
                _ => 0.0,
            };
            // jaq builds the repeated string; a huge count would abort the process.
            return if text.len().max(1) as f64 * times > MAX_REPEAT_BYTES {
                Err(Bail::TooLarge)
            } else {
                unsupported
            };
        }
        (Math::Sub, Arr(_), Arr(_)) | (Math::Mul, Obj(_), Obj(_)) | (Math::Div, Str(_), Str(_)) => {
            return unsupported;
        }
        _ => return Err(Bail::Error),
    })
}
