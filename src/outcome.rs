//! What happens to each input message: exactly one [`Outcome`], scored or dead-lettered.

use std::fmt;

/// Why an input went to the dead-letter topic. The `as_str` names are the values of the
/// `streamscore.dlq.reason` header and of the `reason` metric label: a closed, low-cardinality set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// Shorter than the 5-byte Confluent header, or an empty/absent value.
    Truncated,
    /// First byte is not the Confluent magic byte 0.
    BadMagic,
    /// The schema id is neither in the registry nor among the configured local schemas.
    UnknownSchema,
    /// The writer schema cannot be resolved to the reader schema.
    SchemaMismatch,
    /// The Avro body does not decode with its writer schema.
    Undecodable,
    /// A field the model requires is null or absent.
    MissingFeature,
    /// A feature value is NaN or infinite after its transform.
    InvalidFeature,
    /// The schema registry could not be reached to resolve the schema id.
    RegistryUnavailable,
    /// The value is larger than `schemas.max_message_bytes`.
    Oversized,
}

impl DeadLetterReason {
    /// Every reason, for pre-registering metrics and documentation.
    pub const ALL: [DeadLetterReason; 9] = [
        Self::Truncated,
        Self::BadMagic,
        Self::UnknownSchema,
        Self::SchemaMismatch,
        Self::Undecodable,
        Self::MissingFeature,
        Self::InvalidFeature,
        Self::RegistryUnavailable,
        Self::Oversized,
    ];

    /// Stable snake_case name used in headers, metric labels and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::BadMagic => "bad_magic",
            Self::UnknownSchema => "unknown_schema",
            Self::SchemaMismatch => "schema_mismatch",
            Self::Undecodable => "undecodable",
            Self::MissingFeature => "missing_feature",
            Self::InvalidFeature => "invalid_feature",
            Self::RegistryUnavailable => "registry_unavailable",
            Self::Oversized => "oversized",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected input: the reason (closed set) and a human-readable detail (free text, never a metric label).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub reason: DeadLetterReason,
    pub detail: String,
}

impl Rejection {
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}
