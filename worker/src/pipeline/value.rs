//! JSON values as the pipeline evaluates them (pure; no I/O).
//!
//! Strings borrow from the record's payload or from the compiled pipeline whenever they can,
//! so parsing a record and building outputs allocates only for arrays, objects and escaped
//! strings. Numbers are normalised when parsed: integers that fit `i64` stay exact integers,
//! every other number is an `f64`. Comparison and equality follow jaq, so the fast path and
//! the jaq fallback order values identically.

use std::borrow::Cow;
use std::cmp::Ordering;

/// A JSON value; `'a` is the lifetime of the record payload and of the compiled pipeline.
#[derive(Clone, Debug)]
pub(crate) enum Value<'a> {
    /// `null`
    Null,
    /// `true` / `false`
    Bool(bool),
    /// An integer that fits in `i64`.
    Int(i64),
    /// Any other number (jaq's floating-point numbers).
    Float(f64),
    /// A string.
    Str(Cow<'a, str>),
    /// An array.
    Arr(Vec<Value<'a>>),
    /// An object: keys are unique and keep their insertion order (as in jq).
    Obj(Object<'a>),
}

/// Object entries in insertion order, keys unique.
pub(crate) type Object<'a> = Vec<(Cow<'a, str>, Value<'a>)>;

/// `null`, for paths that find nothing.
pub(crate) static NULL: Value<'static> = Value::Null;

impl<'a> Value<'a> {
    /// jq truthiness: everything except `null` and `false` is true.
    pub(crate) fn is_truthy(&self) -> bool {
        !matches!(self, Value::Null | Value::Bool(false))
    }

    /// jq's name of the value's type (`type`).
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) | Value::Float(_) => "number",
            Value::Str(_) => "string",
            Value::Arr(_) => "array",
            Value::Obj(_) => "object",
        }
    }

    /// Rank of the type in jq's ordering: null < booleans < numbers < strings < arrays < objects.
    fn type_rank(&self) -> u8 {
        match self {
            Value::Null => 0,
            Value::Bool(_) => 1,
            Value::Int(_) | Value::Float(_) => 2,
            Value::Str(_) => 3,
            Value::Arr(_) => 4,
            Value::Obj(_) => 5,
        }
    }
}

/// Key equality with a cheap first check: most keys differ in length or first byte, which
/// spares the `memcmp` call (objects are searched linearly; records have few keys).
#[inline]
pub(crate) fn same_key(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.as_bytes().first() == b.as_bytes().first() && a == b
}

/// The value of `key` in an object, if present.
pub(crate) fn object_get<'o, 'a>(object: &'o Object<'a>, key: &str) -> Option<&'o Value<'a>> {
    object
        .iter()
        .find(|(k, _)| same_key(k, key))
        .map(|(_, v)| v)
}

/// Sets `key` to `value`; an existing key keeps its position (as jq's objects do).
pub(crate) fn object_insert<'a>(object: &mut Object<'a>, key: Cow<'a, str>, value: Value<'a>) {
    match object.iter_mut().find(|(k, _)| same_key(k, &key)) {
        Some((_, slot)) => *slot = value,
        None => object.push((key, value)),
    }
}

/// Compares two floats as jaq does: `-0 == 0`, NaN below every number.
fn float_cmp(left: f64, right: f64) -> Ordering {
    if left == 0.0 && right == 0.0 {
        Ordering::Equal
    } else if left.is_nan() {
        Ordering::Less
    } else if right.is_nan() {
        Ordering::Greater
    } else {
        left.total_cmp(&right)
    }
}

/// jaq's total order on values (used by `<`, `<=`, `>`, `>=`, `min`, `max`).
pub(crate) fn compare(left: &Value<'_>, right: &Value<'_>) -> Ordering {
    match (left, right) {
        (Value::Null, Value::Null) => Ordering::Equal,
        (Value::Bool(x), Value::Bool(y)) => x.cmp(y),
        (Value::Int(x), Value::Int(y)) => x.cmp(y),
        (Value::Int(x), Value::Float(y)) => float_cmp(*x as f64, *y),
        (Value::Float(x), Value::Int(y)) => float_cmp(*x, *y as f64),
        (Value::Float(x), Value::Float(y)) => float_cmp(*x, *y),
        (Value::Str(x), Value::Str(y)) => x.as_bytes().cmp(y.as_bytes()),
        (Value::Arr(x), Value::Arr(y)) => {
            for (a, b) in x.iter().zip(y) {
                let ord = compare(a, b);
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            x.len().cmp(&y.len())
        }
        (Value::Obj(x), Value::Obj(y)) => compare_objects(x, y),
        _ => left.type_rank().cmp(&right.type_rank()),
    }
}

/// Objects compare by their sorted keys first, then by the values in key order.
fn compare_objects(x: &Object<'_>, y: &Object<'_>) -> Ordering {
    match (x.len(), y.len()) {
        (0, 0) => return Ordering::Equal,
        (0, _) => return Ordering::Less,
        (_, 0) => return Ordering::Greater,
        _ => {}
    }
    let sorted = |o: &'_ Object<'_>| {
        let mut entries: Vec<usize> = (0..o.len()).collect();
        entries.sort_by(|&a, &b| o[a].0.as_bytes().cmp(o[b].0.as_bytes()));
        entries
    };
    let (xs, ys) = (sorted(x), sorted(y));
    let keys = xs.iter().map(|&i| x[i].0.as_bytes());
    let ord = keys.cmp(ys.iter().map(|&i| y[i].0.as_bytes()));
    if ord != Ordering::Equal {
        return ord;
    }
    for (&i, &j) in xs.iter().zip(&ys) {
        let ord = compare(&x[i].1, &y[j].1);
        if ord != Ordering::Equal {
            return ord;
        }
    }
    Ordering::Equal
}

/// jaq's equality (`==`): numbers by value (`1 == 1.0`), objects regardless of key order.
pub(crate) fn equal(left: &Value<'_>, right: &Value<'_>) -> bool {
    match (left, right) {
        (Value::Null, Value::Null) => true,
        (Value::Bool(x), Value::Bool(y)) => x == y,
        (Value::Int(x), Value::Int(y)) => x == y,
        (Value::Int(i), Value::Float(f)) | (Value::Float(f), Value::Int(i)) => {
            f.is_finite() && float_cmp(*i as f64, *f) == Ordering::Equal
        }
        (Value::Float(x), Value::Float(y)) => float_cmp(*x, *y) == Ordering::Equal,
        (Value::Str(x), Value::Str(y)) => x == y,
        (Value::Arr(x), Value::Arr(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| equal(a, b))
        }
        (Value::Obj(x), Value::Obj(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| object_get(y, k).is_some_and(|w| equal(v, w)))
        }
        _ => false,
    }
}
