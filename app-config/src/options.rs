//! The type-specific options of one streamer table, parsed by the streamer.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, MapAccess, Visitor};

use crate::error::ConfigError;
use crate::lenient::Lenient;
use crate::text::normalise_key;

/// Origin shown for options built in code rather than read from a file.
const INLINE_ORIGIN: &str = "<inline>";

/// Table name used for options built in code, until [`StreamerOptions::with_name`].
const INLINE_NAME: &str = "inline";

/// The type-specific keys of one `[streamers.<name>]` table: every key except
/// the common ones (`type`, `keys`, `delivery`, `queue`, `stop-node-on-error`).
///
/// This crate does not know these keys. Each streamer parses them into its own
/// config type with [`StreamerOptions::parse`], which should use
/// `#[serde(deny_unknown_fields)]` and snake_case field names: the table's
/// keys are normalised to snake_case (`output-metadata` becomes
/// `output_metadata`) before they reach serde, while the keys of nested
/// tables are left as written (they may be data, such as environment
/// variable names), and errors are reported with the key as the user
/// spelled it, its table, its file and its line.
///
/// Values are read the way the Cosmos SDK reads them: wherever the config
/// type asks for a boolean, a string Go's `strconv.ParseBool` accepts
/// (`"true"`, `"false"`, `"1"`, `"0"`, `"t"`, `"F"`, `"TRUE"`, `"False"`...)
/// is that boolean, and wherever it asks for an integer, a string of decimal
/// digits (`"64"`) is that integer, at any depth. Cosmos's own app.toml
/// template writes `fsync = "false"`; such a file runs unchanged.
#[derive(Debug, Clone)]
pub struct StreamerOptions {
    origin: PathBuf,
    name: String,
    /// Line of the `[streamers.<name>]` header, for errors about missing keys.
    table_line: Option<usize>,
    /// The options, keys normalised to snake_case.
    values: toml::Table,
    /// For each normalised key, how the user spelled it and on which line.
    spellings: BTreeMap<String, Spelling>,
}

/// How and where the user wrote one key.
#[derive(Debug, Clone)]
pub(crate) struct Spelling {
    pub(crate) spelled: String,
    pub(crate) line: Option<usize>,
}

impl Default for StreamerOptions {
    fn default() -> Self {
        StreamerOptions::from_table(toml::Table::new())
    }
}

impl StreamerOptions {
    /// Builds options in code, for applications without an `app.toml` and for
    /// tests. Top-level keys are normalised to snake_case; when the table
    /// holds both spellings of a key, the first in its iteration order wins. The
    /// origin is `<inline>` and the table name `inline` (see
    /// [`StreamerOptions::with_name`]).
    pub fn from_table(table: toml::Table) -> Self {
        let mut values = toml::Table::new();
        let mut spellings = BTreeMap::new();
        for (key, value) in table {
            let canonical = normalise_key(&key);
            if values.contains_key(&canonical) {
                continue;
            }
            values.insert(canonical.clone(), value);
            spellings.insert(
                canonical,
                Spelling {
                    spelled: key,
                    line: None,
                },
            );
        }
        StreamerOptions {
            origin: PathBuf::from(INLINE_ORIGIN),
            name: INLINE_NAME.to_owned(),
            table_line: None,
            values,
            spellings,
        }
    }

    /// Sets the streamer (table) name shown in errors: `[streamers.<name>]`.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Options read from a file; keys already normalised, no spelling conflicts.
    pub(crate) fn from_parts(
        origin: PathBuf,
        name: String,
        table_line: Option<usize>,
        values: toml::Table,
        spellings: BTreeMap<String, Spelling>,
    ) -> Self {
        StreamerOptions {
            origin,
            name,
            table_line,
            values,
            spellings,
        }
    }

    /// Deserializes the options into the streamer's config type.
    ///
    /// Unknown keys (with `#[serde(deny_unknown_fields)]`), missing keys and
    /// values of the wrong type become a [`ConfigError::Key`] naming the file,
    /// the table, the key as the user spelled it and its line.
    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, ConfigError> {
        let failed_key = RefCell::new(None);
        let deserializer = TrackingDeserializer {
            table: &self.values,
            failed_key: &failed_key,
        };
        T::deserialize(deserializer).map_err(|error| self.serde_error(&error, failed_key.take()))
    }

    /// The value of one option; `key` may use either spelling (`write-dir` or `write_dir`).
    pub fn get(&self, key: &str) -> Option<&toml::Value> {
        self.values.get(&normalise_key(key))
    }

    /// True when the table has no type-specific option.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The streamer's name: the `<name>` of `[streamers.<name>]`.
    pub fn table_name(&self) -> &str {
        &self.name
    }

    /// The file the options were read from (`<inline>` when built in code).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// An error about one option, for checks serde cannot do (an unsafe
    /// prefix, a path that must be relative...). `key` may use either
    /// spelling; the error names the key as the user spelled it, the table,
    /// the file and the line.
    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        let canonical = normalise_key(key);
        let (spelled, line) = match self.spellings.get(&canonical) {
            Some(spelling) => (spelling.spelled.clone(), spelling.line),
            None => (key.to_owned(), self.table_line),
        };
        ConfigError::Key {
            path: self.origin.clone(),
            table: format!("[streamers.{}]", self.name),
            key: spelled,
            line,
            message: message.into(),
        }
    }

    /// Maps a serde error back to the key it concerns.
    fn serde_error(&self, error: &toml::de::Error, failed_key: Option<String>) -> ConfigError {
        let raw = error.message();
        // Serde names fields in its messages; in a config file they are keys.
        let message = raw
            .replace("unknown field", "unknown key")
            .replace("missing field", "missing key");
        let key = failed_key.or_else(|| {
            ["unknown field `", "missing field `"]
                .iter()
                .find_map(|prefix| backticked_after(raw, prefix))
        });
        match key {
            Some(key) => self.error(&key, message),
            None => ConfigError::Table {
                path: self.origin.clone(),
                table: format!("[streamers.{}]", self.name),
                line: self.table_line,
                message,
            },
        }
    }
}

/// The text between `prefix` and the next backtick in `message`.
fn backticked_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let rest = &message[start..];
    let end = rest.find('`')?;
    Some(rest[..end].to_owned())
}

/// A deserializer over the options table that remembers which key was being
/// deserialized when an error happened, so the error can name it and its line.
struct TrackingDeserializer<'a> {
    table: &'a toml::Table,
    failed_key: &'a RefCell<Option<String>>,
}

impl<'de> de::Deserializer<'de> for TrackingDeserializer<'_> {
    type Error = toml::de::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_map(TrackingMap {
            entries: self.table.iter(),
            current: None,
            failed_key: self.failed_key,
        })
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct enum
        identifier ignored_any
    }
}

struct TrackingMap<'a> {
    entries: toml::map::Iter<'a, String, toml::Value>,
    current: Option<(&'a String, &'a toml::Value)>,
    failed_key: &'a RefCell<Option<String>>,
}

impl TrackingMap<'_> {
    fn blame(&self, key: &str) {
        self.failed_key.replace(Some(key.to_owned()));
    }
}

impl<'de> MapAccess<'de> for TrackingMap<'_> {
    type Error = toml::de::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        let Some((key, value)) = self.entries.next() else {
            return Ok(None);
        };
        self.current = Some((key, value));
        // An unknown key fails here, in the field identifier's visitor.
        let deserializer: de::value::StrDeserializer<'_, toml::de::Error> =
            key.as_str().into_deserializer();
        seed.deserialize(deserializer)
            .map(Some)
            .inspect_err(|_| self.blame(key))
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        let Some((key, value)) = self.current.take() else {
            return Err(de::Error::custom("a value was requested before its key"));
        };
        seed.deserialize(Lenient(value.clone()))
            .inspect_err(|_| self.blame(key))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len())
    }
}
