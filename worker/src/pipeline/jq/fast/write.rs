//! Object constructions with literal keys written straight to JSON text (pure; no I/O).
//!
//! A `map` such as `{user: .user, n: 1}` is the usual last step of a job: building its object
//! only to write it out costs an allocation, the key checks of `object_insert` and a drop per
//! record. Writing each field as it is evaluated gives the same text.

use super::{Bail, Fast, Key};
use crate::pipeline::{
    value::Value,
    write::{NonFinite, write_str, write_value},
};

/// The entries of `fast` when it is an object construction whose keys are all literal and
/// distinct (so no later entry replaces an earlier one, and the text follows entry order).
pub(crate) fn literal_object(fast: &Fast) -> Option<&[(Key, Fast)]> {
    let Fast::Obj(entries) = fast else {
        return None;
    };
    for (i, (key, _)) in entries.iter().enumerate() {
        let Key::Lit(name) = key else {
            return None;
        };
        let repeated = entries[..i]
            .iter()
            .any(|(earlier, _)| matches!(earlier, Key::Lit(e) if e == name));
        if repeated {
            return None;
        }
    }
    Some(entries)
}

/// Appends the compact JSON text of the object `entries` build from `input`, as output
/// records write it. `Ok(false)`: a field yields nothing, so the object is no output. Every
/// field is evaluated either way (as `eval` does, so an error in a later field is seen); on
/// `Ok(false)` or a bail, `out` may hold a partial text that the caller drops.
pub(crate) fn write_object<'x>(
    entries: &'x [(Key, Fast)],
    input: &Value<'x>,
    out: &mut Vec<u8>,
) -> Result<bool, Bail> {
    let mut complete = true;
    out.push(b'{');
    for (i, (key, value)) in entries.iter().enumerate() {
        let Key::Lit(name) = key else {
            return Err(Bail::Unsupported);
        };
        let value = value.eval(input)?;
        match value {
            Some(value) if complete => {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, name);
                out.push(b':');
                write_value(out, value.get(), NonFinite::Json);
            }
            _ => complete = false,
        }
    }
    out.push(b'}');
    Ok(complete)
}
