//! Values as the Cosmos SDK reads them.
//!
//! Cosmos reads `app.toml` through viper and `cast`: a boolean may be written
//! as a TOML boolean or as a string Go's `strconv.ParseBool` accepts, and an
//! integer as a TOML integer or a decimal string. Cosmos's own app.toml
//! template writes `stop-node-on-error = "true"`, so every config generated
//! from it has quoted booleans. [`Lenient`] wraps a `toml::Value` and gives
//! serde a boolean or an integer whenever the target type asks for one and the
//! value is such a string; for everything else it is the `toml::Value`
//! deserializer. Every streamer type gets this for free: its options are
//! deserialized through it by `StreamerOptions::parse`.

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};

/// The strings Go's `strconv.ParseBool` accepts, as one line for error messages.
pub(crate) const BOOL_STRINGS: &str = "\"1\", \"t\", \"T\", \"TRUE\", \"true\", \"True\", \"0\", \"f\", \"F\", \"FALSE\", \"false\", \"False\"";

/// Parses a boolean as Go's `strconv.ParseBool` does: exactly these
/// spellings, no surrounding spaces.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Parses a decimal integer written as a string: an optional sign, then
/// ASCII digits only (no spaces, no `_`, no `0x`).
pub(crate) fn parse_integer(text: &str) -> Option<i128> {
    let digits = text.strip_prefix(['+', '-']).unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

/// The message of a common key whose value is not a boolean; `got`
/// describes the value (`string "yes"`).
pub(crate) fn not_a_bool(got: &str) -> String {
    format!("expected a boolean (true or false, or as a string one of {BOOL_STRINGS}), got {got}")
}

/// What an option that wants a boolean accepts, for error messages.
const EXPECTED_BOOL: &str = "a boolean (true or false, or as a string one of";

/// What an option that wants an integer accepts, for error messages.
const EXPECTED_INTEGER: &str = "an integer (or a string of decimal digits)";

// The messages about options follow serde's ("invalid type: string "x",
// expected a boolean"), which they replace for strings, so that a message
// reads the same whichever wrong value was given.

/// The message of an option string that is not a boolean.
fn option_not_a_bool(text: &str) -> String {
    format!("invalid type: string {text:?}, expected {EXPECTED_BOOL} {BOOL_STRINGS})")
}

/// The message of an option string that is not a decimal integer.
fn option_not_an_integer(text: &str) -> String {
    format!("invalid type: string {text:?}, expected {EXPECTED_INTEGER}")
}

/// A `toml::Value` read the way Cosmos reads it (see the module comment).
pub(crate) struct Lenient(pub(crate) toml::Value);

type Error = toml::de::Error;

fn string_error(message: String) -> Error {
    de::Error::custom(message)
}

macro_rules! lenient_integer {
    ($($method:ident => $ty:ty, $visit:ident;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
                match self.0 {
                    toml::Value::String(text) => {
                        let number = parse_integer(&text)
                            .ok_or_else(|| string_error(option_not_an_integer(&text)))?;
                        let number = <$ty>::try_from(number).map_err(|_| {
                            string_error(format!(
                                "invalid value: string {text:?}, expected an integer between {} and {}",
                                <$ty>::MIN,
                                <$ty>::MAX
                            ))
                        })?;
                        visitor.$visit(number.into())
                    }
                    other => other.$method(visitor),
                }
            }
        )*
    };
}

impl<'de> de::Deserializer<'de> for Lenient {
    type Error = Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            toml::Value::Array(items) => visitor.visit_seq(LenientSeq {
                items: items.into_iter(),
            }),
            toml::Value::Table(table) => visitor.visit_map(LenientMap {
                entries: table.into_iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            toml::Value::String(text) => match parse_bool(&text) {
                Some(flag) => visitor.visit_bool(flag),
                None => Err(string_error(option_not_a_bool(&text))),
            },
            other => other.deserialize_bool(visitor),
        }
    }

    lenient_integer! {
        deserialize_i8 => i8, visit_i64;
        deserialize_i16 => i16, visit_i64;
        deserialize_i32 => i32, visit_i64;
        deserialize_i64 => i64, visit_i64;
        deserialize_u8 => u8, visit_u64;
        deserialize_u16 => u16, visit_u64;
        deserialize_u32 => u32, visit_u64;
        deserialize_u64 => u64, visit_u64;
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        // TOML has no null: a value that is present is `Some`.
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            array @ toml::Value::Array(_) => Lenient(array).deserialize_any(visitor),
            other => other.deserialize_seq(visitor),
        }
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            table @ toml::Value::Table(_) => Lenient(table).deserialize_any(visitor),
            other => other.deserialize_map(visitor),
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        match self.0 {
            table @ toml::Value::Table(_) => Lenient(table).deserialize_any(visitor),
            // Datetimes and wrong types: toml's own rules and messages.
            other => other.deserialize_struct(name, fields, visitor),
        }
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_enum(name, variants, visitor)
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            toml::Value::String(text) => match parse_integer(&text) {
                Some(number) => visitor.visit_i128(number),
                None => Err(string_error(option_not_an_integer(&text))),
            },
            other => other.deserialize_i128(visitor),
        }
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        match self.0 {
            toml::Value::String(text) => match parse_integer(&text).map(u128::try_from) {
                Some(Ok(number)) => visitor.visit_u128(number),
                Some(Err(_)) => Err(string_error(format!(
                    "invalid value: string {text:?}, expected a non-negative integer"
                ))),
                None => Err(string_error(option_not_an_integer(&text))),
            },
            other => other.deserialize_u128(visitor),
        }
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_f32(visitor)
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_f64(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_char(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_str(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_string(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_bytes(visitor)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_byte_buf(visitor)
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_unit(visitor)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Error> {
        self.0.deserialize_unit_struct(name, visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_identifier(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
        self.0.deserialize_ignored_any(visitor)
    }
}

/// The items of an array, each read leniently.
struct LenientSeq {
    items: std::vec::IntoIter<toml::Value>,
}

impl<'de> SeqAccess<'de> for LenientSeq {
    type Error = Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Error> {
        self.items
            .next()
            .map(|item| seed.deserialize(Lenient(item)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.items.len())
    }
}

/// The entries of a nested table, values read leniently. Keys are kept as
/// written: nested tables may be data (environment variables, headers).
struct LenientMap {
    entries: toml::map::IntoIter<String, toml::Value>,
    value: Option<toml::Value>,
}

impl<'de> MapAccess<'de> for LenientMap {
    type Error = Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.value = Some(value);
        let key: de::value::StringDeserializer<Error> = key.into_deserializer();
        seed.deserialize(key).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Error> {
        match self.value.take() {
            Some(value) => seed.deserialize(Lenient(value)),
            None => Err(de::Error::custom("a value was requested before its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_go_parse_bool_spellings() {
        for text in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(text), Some(true), "{text}");
        }
        for text in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(text), Some(false), "{text}");
        }
        for text in [
            "", "yes", "no", "on", "tRUE", " true", "true ", "2", "FaLse",
        ] {
            assert_eq!(parse_bool(text), None, "{text}");
        }
    }

    #[test]
    fn lenient_decimal_integers() {
        assert_eq!(parse_integer("64"), Some(64));
        assert_eq!(parse_integer("-3"), Some(-3));
        assert_eq!(parse_integer("+7"), Some(7));
        for text in ["", "-", "6 4", " 64", "0x40", "1_000", "1.5", "big", "1e3"] {
            assert_eq!(parse_integer(text), None, "{text}");
        }
    }
}
