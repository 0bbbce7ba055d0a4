//! Compact JSON text of values, byte-identical to what jaq writes (pure; no I/O).
//!
//! One writer serves both `tostring` (which must match jaq exactly, so both expression paths
//! agree) and output records, which differ only in how non-finite numbers are written.

use std::io::Write as _;

use super::value::Value;

/// How to write numbers JSON cannot represent (NaN, ±infinity).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NonFinite {
    /// As jaq's `tostring`/`tojson` do: `NaN`, `Infinity`, `-Infinity` (not valid JSON).
    JaqText,
    /// As jq writes output: `null` and ±`1.7976931348623157e+308` (valid JSON).
    Json,
}

/// Appends the compact JSON text of `value` to `out`.
pub(crate) fn write_value(out: &mut Vec<u8>, value: &Value<'_>, non_finite: NonFinite) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Int(i) => write_int(out, *i),
        Value::Float(f) => write_float(out, *f, non_finite),
        Value::Str(s) => write_str(out, s),
        Value::Arr(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item, non_finite);
            }
            out.push(b']');
        }
        Value::Obj(entries) => {
            out.push(b'{');
            for (i, (key, item)) in entries.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, key);
                out.push(b':');
                write_value(out, item, non_finite);
            }
            out.push(b'}');
        }
    }
}

/// Appends the decimal digits of `i`.
pub(crate) fn write_int(out: &mut Vec<u8>, i: i64) {
    let mut digits = [0u8; 20];
    let mut n = i.unsigned_abs();
    let mut pos = digits.len();
    loop {
        pos -= 1;
        digits[pos] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if i < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[pos..]);
}

/// Appends a float the way jaq prints it (shortest round-trip form, `1.0` for integral values).
fn write_float(out: &mut Vec<u8>, f: f64, non_finite: NonFinite) {
    if !f.is_finite() && non_finite == NonFinite::Json {
        let text: &[u8] = if f.is_nan() {
            b"null"
        } else if f > 0.0 {
            b"1.7976931348623157e+308"
        } else {
            b"-1.7976931348623157e+308"
        };
        out.extend_from_slice(text);
        return;
    }
    // jaq's own number formatting, so the text is exactly jaq's. Writing to a Vec cannot fail.
    let _ = write!(out, "{}", jaq_json::Num::Float(f));
}

/// Appends a JSON string literal, escaping as jaq does: `\b \f \t \n \r \\ \"`, other control
/// characters and DEL as `\u00xx`; everything else (including non-ASCII) verbatim.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f | 0x7f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if escape.is_empty() {
            out.extend_from_slice(b"\\u00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        } else {
            out.extend_from_slice(escape);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// The compact JSON text of `value` as jaq's `tostring` produces it.
pub(crate) fn to_jaq_text(value: &Value<'_>) -> String {
    let mut out = Vec::new();
    write_value(&mut out, value, NonFinite::JaqText);
    // Only string contents (valid UTF-8) and ASCII are ever written.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}
