//! Why a message is not a valid CloudEvent.

use alloc::string::String;
use core::fmt;

/// A CloudEvent that breaks the specification or cannot be read in its format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloudEventError {
    /// A required attribute (`id`, `source`, `specversion`, `type`) is absent.
    MissingAttribute(&'static str),
    /// An attribute's value breaks its type's rules.
    InvalidAttribute {
        /// The attribute's name.
        name: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// An extension attribute's name is not lower-case ASCII letters and digits, or is reserved.
    InvalidAttributeName(String),
    /// The same attribute is given twice.
    DuplicateAttribute(String),
    /// `specversion` is not `1.0`.
    UnsupportedSpecVersion(String),
    /// A structured-mode event is not a JSON object, or its JSON is malformed.
    InvalidJson(String),
    /// Both `data` and `data_base64` are present, or `data_base64` is not base64.
    InvalidData(&'static str),
    /// A structured content type other than `application/cloudevents+json`.
    UnsupportedFormat(String),
}

impl fmt::Display for CloudEventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloudEventError::MissingAttribute(name) => {
                write!(f, "required attribute `{name}` is missing")
            }
            CloudEventError::InvalidAttribute { name, reason } => {
                write!(f, "attribute `{name}` {reason}")
            }
            CloudEventError::InvalidAttributeName(name) => {
                write!(f, "`{name}` is not a valid attribute name (lower-case a-z and 0-9 only)")
            }
            CloudEventError::DuplicateAttribute(name) => {
                write!(f, "attribute `{name}` is given twice")
            }
            CloudEventError::UnsupportedSpecVersion(v) => {
                write!(f, "specversion `{v}` is not supported (only 1.0)")
            }
            CloudEventError::InvalidJson(e) => write!(f, "invalid JSON event: {e}"),
            CloudEventError::InvalidData(e) => write!(f, "invalid event data: {e}"),
            CloudEventError::UnsupportedFormat(ct) => write!(f, "unsupported event format `{ct}`"),
        }
    }
}

impl core::error::Error for CloudEventError {}
