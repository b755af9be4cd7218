//! The CloudEvent model and the specification's rules for its attributes.

use alloc::collections::BTreeMap;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use super::CloudEventError;
use super::time::validate_timestamp;

/// The only CloudEvents version meshgate reads and writes.
pub const SPEC_VERSION: &str = "1.0";

/// Attribute names the specification defines; extensions may not take them.
const RESERVED: [&str; 10] =
    ["specversion", "id", "source", "type", "datacontenttype", "dataschema", "subject", "time", "data", "data_base64"];

/// A CloudEvents 1.0 event.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CloudEvent {
    /// `id`: unique within the scope of `source`.
    pub id: String,
    /// `source`: a URI-reference naming the context the event happened in.
    pub source: String,
    /// `type`: the kind of event, e.g. `com.example.reading`.
    pub ty: String,
    /// `datacontenttype`: the media type of `data`.
    pub datacontenttype: Option<String>,
    /// `dataschema`: an absolute URI of the schema `data` follows.
    pub dataschema: Option<String>,
    /// `subject`: what the event is about within `source`.
    pub subject: Option<String>,
    /// `time`: an RFC 3339 timestamp.
    pub time: Option<String>,
    /// Extension attributes, by name.
    pub extensions: BTreeMap<String, ExtensionValue>,
    /// The event payload.
    pub data: Option<Data>,
}

/// The value of an extension attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtensionValue {
    /// A string (also how URI, URI-reference, Binary and Timestamp values travel).
    String(String),
    /// A boolean.
    Boolean(bool),
    /// A 32-bit signed integer.
    Integer(i64),
}

impl ExtensionValue {
    /// The canonical string form, as binary-mode bindings carry it.
    pub fn to_canonical_string(&self) -> String {
        match self {
            ExtensionValue::String(s) => s.clone(),
            ExtensionValue::Boolean(b) => b.to_string(),
            ExtensionValue::Integer(i) => i.to_string(),
        }
    }
}

impl From<&str> for ExtensionValue {
    fn from(s: &str) -> Self {
        ExtensionValue::String(s.into())
    }
}

/// An event's data.
#[derive(Debug, Clone, PartialEq)]
pub enum Data {
    /// A JSON value (for JSON content types, or any `data` member of a structured event).
    Json(serde_json::Value),
    /// Text.
    Text(String),
    /// Bytes (`data_base64` in the JSON format).
    Binary(Vec<u8>),
}

/// A media type without its parameters, lower-cased.
fn essence(content_type: &str) -> String {
    content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// Whether `content_type` is JSON: `application/json`, `text/json` or any `+json` suffix, parameters ignored.
pub fn is_json_content_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

/// Whether a binding's content type marks a structured-mode event: `Ok(true)` for the JSON event format,
/// `Ok(false)` for any other content, an error for another event format (`application/cloudevents+avro`, ...).
pub(crate) fn is_structured(content_type: &str) -> Result<bool, CloudEventError> {
    let essence = essence(content_type);
    if !essence.starts_with("application/cloudevents") {
        return Ok(false);
    }
    if essence == super::STRUCTURED_CONTENT_TYPE || essence == "application/cloudevents" {
        Ok(true)
    } else {
        Err(CloudEventError::UnsupportedFormat(content_type.into()))
    }
}

impl Data {
    /// Classifies a message body: JSON when the content type says so (or, without one, when it parses as JSON),
    /// text for `text/*` content that is UTF-8, bytes otherwise. Returns `None` for an empty body.
    ///
    /// Returns the content type that describes the result when none was given (`application/json` for JSON,
    /// `application/octet-stream` for bytes).
    pub fn from_bytes(content_type: Option<&str>, body: &[u8]) -> (Option<Data>, Option<&'static str>) {
        if body.is_empty() {
            return (None, None);
        }
        match content_type {
            Some(ct) if is_json_content_type(ct) => match serde_json::from_slice(body) {
                Ok(v) => (Some(Data::Json(v)), None),
                Err(_) => (Some(Data::Binary(body.to_vec())), None),
            },
            Some(ct) if ct.to_ascii_lowercase().starts_with("text/") => match core::str::from_utf8(body) {
                Ok(s) => (Some(Data::Text(s.into())), None),
                Err(_) => (Some(Data::Binary(body.to_vec())), None),
            },
            Some(_) => (Some(Data::Binary(body.to_vec())), None),
            None => match serde_json::from_slice(body) {
                Ok(v) => (Some(Data::Json(v)), Some("application/json")),
                Err(_) => (Some(Data::Binary(body.to_vec())), Some("application/octet-stream")),
            },
        }
    }

    /// The data as bytes on the wire of a binary-mode binding.
    pub fn to_bytes(&self) -> Vec<u8> {
        match self {
            Data::Json(v) => serde_json::to_vec(v).unwrap_or_default(),
            Data::Text(s) => s.as_bytes().to_vec(),
            Data::Binary(b) => b.clone(),
        }
    }
}

/// Checks a CloudEvents `String`: no control characters (U+0000-U+001F, U+007F-U+009F) and no noncharacters.
fn check_string(name: &str, value: &str) -> Result<(), CloudEventError> {
    let bad = value.chars().any(|c| {
        let cp = u32::from(c);
        cp <= 0x1f || (0x7f..=0x9f).contains(&cp) || (0xfdd0..=0xfdef).contains(&cp) || cp & 0xfffe == 0xfffe
    });
    if bad {
        return Err(CloudEventError::InvalidAttribute {
            name: name.into(),
            reason: "contains a control character or a Unicode noncharacter",
        });
    }
    Ok(())
}

fn invalid(name: &str, reason: &'static str) -> CloudEventError {
    CloudEventError::InvalidAttribute { name: name.into(), reason }
}

fn check_required(name: &'static str, value: &str) -> Result<(), CloudEventError> {
    if value.is_empty() {
        return Err(invalid(name, "must be a non-empty string"));
    }
    check_string(name, value)
}

/// A URI-reference as far as a receiver can check without a full parser: no spaces or characters RFC 3986 never
/// allows unescaped.
fn check_uri_reference(name: &str, value: &str) -> Result<(), CloudEventError> {
    if value.chars().any(|c| c.is_whitespace() || matches!(c, '"' | '<' | '>' | '\\' | '^' | '`' | '{' | '|' | '}')) {
        return Err(invalid(name, "is not a URI-reference"));
    }
    Ok(())
}

/// An absolute URI: a scheme (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )`) and a colon.
fn check_absolute_uri(name: &str, value: &str) -> Result<(), CloudEventError> {
    check_uri_reference(name, value)?;
    let scheme = value.split_once(':').map(|(s, _)| s).unwrap_or_default();
    let mut chars = scheme.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid {
        return Err(invalid(name, "is not an absolute URI"));
    }
    Ok(())
}

/// Whether `value` is a media type per RFC 2046: `type/subtype` of token characters, then optional parameters.
pub fn is_media_type(value: &str) -> bool {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c));
    matches!(essence.split_once('/'), Some((t, s)) if token(t) && token(s))
}

fn check_media_type(name: &str, value: &str) -> Result<(), CloudEventError> {
    if is_media_type(value) { Ok(()) } else { Err(invalid(name, "is not a media type (type/subtype)")) }
}

/// Whether `name` is a valid extension attribute name: lower-case ASCII letters and digits, not a reserved name.
pub(crate) fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) && !RESERVED.contains(&name)
}

impl CloudEvent {
    /// Checks every attribute against the CloudEvents 1.0 rules.
    pub fn validate(&self) -> Result<(), CloudEventError> {
        check_required("id", &self.id)?;
        check_required("source", &self.source)?;
        check_uri_reference("source", &self.source)?;
        check_required("type", &self.ty)?;
        if let Some(ct) = &self.datacontenttype {
            check_string("datacontenttype", ct)?;
            check_media_type("datacontenttype", ct)?;
        }
        if let Some(schema) = &self.dataschema {
            check_required("dataschema", schema)?;
            check_absolute_uri("dataschema", schema)?;
        }
        if let Some(subject) = &self.subject {
            check_required("subject", subject)?;
        }
        if let Some(time) = &self.time {
            validate_timestamp(time).map_err(|reason| invalid("time", reason))?;
        }
        for (name, value) in &self.extensions {
            if !is_valid_extension_name(name) {
                return Err(CloudEventError::InvalidAttributeName(name.clone()));
            }
            match value {
                ExtensionValue::String(s) => check_string(name, s)?,
                ExtensionValue::Integer(i) if i32::try_from(*i).is_err() => {
                    return Err(invalid(name, "is an integer outside the 32-bit range"));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Checks that the required attributes a binding or format may leave out (`id`, `source`, `type`) are there.
    pub fn check_required_present(&self) -> Result<(), CloudEventError> {
        for (name, value) in [("id", &self.id), ("source", &self.source), ("type", &self.ty)] {
            if value.is_empty() {
                return Err(CloudEventError::MissingAttribute(name));
            }
        }
        Ok(())
    }

    /// Every context attribute that is set, except `datacontenttype` (which bindings carry in their own content
    /// type), as `(name, value)`, starting with `specversion`.
    pub fn context_attributes(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        [
            ("specversion", Some(SPEC_VERSION)),
            ("id", Some(self.id.as_str())),
            ("source", Some(self.source.as_str())),
            ("type", Some(self.ty.as_str())),
            ("dataschema", self.dataschema.as_deref()),
            ("subject", self.subject.as_deref()),
            ("time", self.time.as_deref()),
        ]
        .into_iter()
        .filter_map(|(name, value)| value.map(|v| (name, v)))
    }

    /// Sets an attribute from its binary-mode string form (a context attribute or an extension).
    ///
    /// `specversion` must be `1.0`; `datacontenttype` is not set this way in the MQTT binding but is accepted.
    pub fn set_attribute(&mut self, name: &str, value: &str) -> Result<(), CloudEventError> {
        let slot = |s: &mut Option<String>| -> Result<(), CloudEventError> {
            if s.is_some() {
                return Err(CloudEventError::DuplicateAttribute(name.into()));
            }
            *s = Some(value.into());
            Ok(())
        };
        match name {
            "specversion" if value == SPEC_VERSION => Ok(()),
            "specversion" => Err(CloudEventError::UnsupportedSpecVersion(value.into())),
            "id" | "source" | "type" => {
                let field = match name {
                    "id" => &mut self.id,
                    "source" => &mut self.source,
                    _ => &mut self.ty,
                };
                if !field.is_empty() {
                    return Err(CloudEventError::DuplicateAttribute(name.into()));
                }
                *field = value.into();
                Ok(())
            }
            "datacontenttype" => slot(&mut self.datacontenttype),
            "dataschema" => slot(&mut self.dataschema),
            "subject" => slot(&mut self.subject),
            "time" => slot(&mut self.time),
            _ if !is_valid_extension_name(name) => Err(CloudEventError::InvalidAttributeName(name.into())),
            _ => {
                if self.extensions.insert(name.into(), ExtensionValue::String(value.into())).is_some() {
                    return Err(CloudEventError::DuplicateAttribute(name.into()));
                }
                Ok(())
            }
        }
    }

    /// Every attribute but `datacontenttype` as `(name, canonical string)`, in a stable order: the context
    /// attributes first, then extensions by name. This is what binary-mode bindings put in their headers.
    pub fn binary_attributes(&self) -> impl Iterator<Item = (&str, String)> + '_ {
        self.context_attributes()
            .map(|(name, v)| (name, String::from(v)))
            .chain(self.extensions.iter().map(|(k, v)| (k.as_str(), v.to_canonical_string())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> CloudEvent {
        CloudEvent { id: "1".into(), source: "/s".into(), ty: "t".into(), ..CloudEvent::default() }
    }

    #[test]
    fn required_attributes_must_be_non_empty() {
        assert!(event().validate().is_ok());
        let mut e = event();
        e.id.clear();
        assert_eq!(e.validate(), Err(invalid("id", "must be a non-empty string")));
    }

    #[test]
    fn extension_names_are_lower_case_alphanumerics() {
        let mut e = event();
        e.extensions.insert("Device-Id".into(), "x".into());
        assert_eq!(e.validate(), Err(CloudEventError::InvalidAttributeName("Device-Id".into())));
        assert!(e.set_attribute("data", "x").is_err());
        assert!(e.set_attribute("deviceid", "x").is_ok());
        assert_eq!(e.set_attribute("deviceid", "y"), Err(CloudEventError::DuplicateAttribute("deviceid".into())));
    }

    #[test]
    fn attribute_values_follow_their_types() {
        let mut e = event();
        e.time = Some("yesterday".into());
        assert!(e.validate().is_err());
        let mut e = event();
        e.dataschema = Some("schemas/reading.json".into());
        assert!(e.validate().is_err());
        let mut e = event();
        e.datacontenttype = Some("json".into());
        assert!(e.validate().is_err());
        let mut e = event();
        e.source = "has space".into();
        assert!(e.validate().is_err());
        let mut e = event();
        e.subject = Some("line\nbreak".into());
        assert!(e.validate().is_err());
        let mut e = event();
        e.extensions.insert("big".into(), ExtensionValue::Integer(1 << 40));
        assert!(e.validate().is_err());
    }

    #[test]
    fn data_is_classified_by_content_type_then_sniffed() {
        assert!(matches!(Data::from_bytes(None, b"{\"a\":1}"), (Some(Data::Json(_)), Some("application/json"))));
        assert!(matches!(Data::from_bytes(None, b"\xff"), (Some(Data::Binary(_)), Some("application/octet-stream"))));
        assert!(matches!(Data::from_bytes(Some("text/plain"), b"hi"), (Some(Data::Text(_)), None)));
        assert!(matches!(
            Data::from_bytes(Some("application/vnd.x+json; charset=utf-8"), b"[1]"),
            (Some(Data::Json(_)), None)
        ));
        assert_eq!(Data::from_bytes(None, b""), (None, None));
    }
}
