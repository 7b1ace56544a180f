//! OVSDB's JSON forms (RFC 7047 section 5.1): a uuid is `["uuid", "…"]`, a set with other
//! than one element is `["set", […]]`, a map is `["map", [[k, v], …]]`.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `["uuid", id]`.
pub fn uuid(id: &str) -> Value {
    json!(["uuid", id])
}

/// `["named-uuid", name]`: a row inserted earlier in the same transaction.
pub fn named_uuid(name: &str) -> Value {
    json!(["named-uuid", name])
}

/// A set of atoms.
pub fn set(atoms: impl IntoIterator<Item = Value>) -> Value {
    json!(["set", atoms.into_iter().collect::<Vec<_>>()])
}

/// A string-to-string map.
pub fn map<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Value {
    json!([
        "map",
        pairs
            .into_iter()
            .map(|(k, v)| json!([k, v]))
            .collect::<Vec<_>>()
    ])
}

/// The id in `["uuid", id]`.
pub fn as_uuid(value: &Value) -> Option<&str> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::String(id)]) if tag == "uuid" => Some(id),
        _ => None,
    }
}

/// The atoms of a set column: a set, one bare atom, or nothing.
pub fn set_atoms(value: &Value) -> Vec<&Value> {
    match value.as_array().map(Vec::as_slice) {
        Some([tag, Value::Array(atoms)]) if tag == "set" => atoms.iter().collect(),
        _ if value.is_null() => Vec::new(),
        _ => vec![value],
    }
}

/// The uuids of a set-of-references column.
pub fn uuid_set(value: &Value) -> Vec<String> {
    set_atoms(value)
        .into_iter()
        .filter_map(as_uuid)
        .map(str::to_string)
        .collect()
}

/// The strings of a set-of-strings column (an optional string is a set of zero or one).
pub fn string_set(value: &Value) -> Vec<String> {
    set_atoms(value)
        .into_iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect()
}

/// A string-to-string map column.
pub fn string_map(value: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some([tag, Value::Array(pairs)]) = value.as_array().map(Vec::as_slice) {
        if tag == "map" {
            for pair in pairs {
                if let Some([Value::String(k), Value::String(v)]) =
                    pair.as_array().map(Vec::as_slice)
                {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_through_their_json_forms() {
        assert_eq!(as_uuid(&uuid("0e2f")), Some("0e2f"));
        assert_eq!(as_uuid(&json!("0e2f")), None);
        assert_eq!(uuid_set(&set([uuid("a"), uuid("b")])), ["a", "b"]);
        // A set of one is written as its bare atom.
        assert_eq!(uuid_set(&uuid("a")), ["a"]);
        assert_eq!(string_set(&json!(["set", []])), Vec::<String>::new());
        assert_eq!(string_set(&json!("x")), ["x"]);
        let m = string_map(&map([("praas:owner", "praas"), ("k", "v")]));
        assert_eq!(m["praas:owner"], "praas");
        assert_eq!(m.len(), 2);
        assert!(string_map(&json!("x")).is_empty());
    }
}
