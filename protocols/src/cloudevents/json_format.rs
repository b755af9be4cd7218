//! The CloudEvents JSON event format (structured mode): one JSON object per event.

use alloc::string::{String, ToString};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::event::is_valid_extension_name;
use super::{CloudEvent, CloudEventError, Data, ExtensionValue, SPEC_VERSION, is_json_content_type};

fn string_attr(name: &str, v: Value) -> Result<Option<String>, CloudEventError> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        _ => Err(CloudEventError::InvalidAttribute { name: name.into(), reason: "must be a JSON string" }),
    }
}

impl CloudEvent {
    /// Reads a structured-mode event and validates it.
    pub fn from_json_slice(json: &[u8]) -> Result<CloudEvent, CloudEventError> {
        let value: Value = serde_json::from_slice(json).map_err(|e| CloudEventError::InvalidJson(e.to_string()))?;
        CloudEvent::from_json_value(value)
    }

    /// Reads a structured-mode event from a parsed JSON value and validates it. A `null` attribute counts as
    /// absent.
    pub fn from_json_value(value: Value) -> Result<CloudEvent, CloudEventError> {
        let Value::Object(map) = value else {
            return Err(CloudEventError::InvalidJson("an event must be a JSON object".into()));
        };
        let mut event = CloudEvent::default();
        let mut specversion = None;
        let mut data = None;
        let mut data_base64 = None;
        for (name, v) in map {
            match name.as_str() {
                "specversion" => specversion = string_attr(&name, v)?,
                "id" => event.id = string_attr(&name, v)?.unwrap_or_default(),
                "source" => event.source = string_attr(&name, v)?.unwrap_or_default(),
                "type" => event.ty = string_attr(&name, v)?.unwrap_or_default(),
                "datacontenttype" => event.datacontenttype = string_attr(&name, v)?,
                "dataschema" => event.dataschema = string_attr(&name, v)?,
                "subject" => event.subject = string_attr(&name, v)?,
                "time" => event.time = string_attr(&name, v)?,
                "data" => data = Some(v),
                "data_base64" => data_base64 = string_attr(&name, v)?,
                _ if !is_valid_extension_name(&name) => {
                    return Err(CloudEventError::InvalidAttributeName(name));
                }
                _ => {
                    let ext = match v {
                        Value::Null => continue,
                        Value::String(s) => ExtensionValue::String(s),
                        Value::Bool(b) => ExtensionValue::Boolean(b),
                        Value::Number(n) => ExtensionValue::Integer(n.as_i64().ok_or_else(|| {
                            CloudEventError::InvalidAttribute { name: name.clone(), reason: "must be an integer" }
                        })?),
                        _ => {
                            return Err(CloudEventError::InvalidAttribute {
                                name,
                                reason: "must be a string, boolean or integer",
                            });
                        }
                    };
                    event.extensions.insert(name, ext);
                }
            }
        }
        match specversion.as_deref() {
            None => return Err(CloudEventError::MissingAttribute("specversion")),
            Some(SPEC_VERSION) => {}
            Some(other) => return Err(CloudEventError::UnsupportedSpecVersion(other.into())),
        }
        event.check_required_present()?;
        event.data = match (data, data_base64) {
            (Some(Value::Null) | None, None) => None,
            (None | Some(Value::Null), Some(b64)) => Some(Data::Binary(
                BASE64.decode(b64.as_bytes()).map_err(|_| CloudEventError::InvalidData("data_base64 is not base64"))?,
            )),
            (Some(_), Some(_)) => {
                return Err(CloudEventError::InvalidData("both data and data_base64 are present"));
            }
            (Some(Value::String(s)), None) if !event.datacontenttype.as_deref().is_none_or(is_json_content_type) => {
                Some(Data::Text(s))
            }
            (Some(v), None) => Some(Data::Json(v)),
        };
        event.validate()?;
        Ok(event)
    }

    /// The event in the JSON format, as a JSON value.
    pub fn to_json_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// The event in the JSON format, as one line of text (no newlines inside).
    pub fn to_json_string(&self) -> String {
        // Serializing string-keyed maps of strings, numbers and JSON values into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// Writes the JSON format directly, without building a JSON value: context attributes first, then extensions,
/// then the data.
impl Serialize for CloudEvent {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("specversion", SPEC_VERSION)?;
        map.serialize_entry("id", &self.id)?;
        map.serialize_entry("source", &self.source)?;
        map.serialize_entry("type", &self.ty)?;
        for (name, value) in [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ] {
            if let Some(v) = value {
                map.serialize_entry(name, v)?;
            }
        }
        for (name, value) in &self.extensions {
            match value {
                ExtensionValue::String(s) => map.serialize_entry(name, s)?,
                ExtensionValue::Boolean(b) => map.serialize_entry(name, b)?,
                ExtensionValue::Integer(i) => map.serialize_entry(name, i)?,
            }
        }
        match &self.data {
            None => {}
            Some(Data::Json(v)) => map.serialize_entry("data", v)?,
            Some(Data::Text(s)) => map.serialize_entry("data", s)?,
            Some(Data::Binary(b)) => map.serialize_entry("data_base64", &Base64(b))?,
        }
        map.end()
    }
}

/// Bytes serialized as a standard base64 string, encoded straight into the output.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&base64::display::Base64Display::new(self.0, &BASE64))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    #[test]
    fn the_spec_example_round_trips() {
        let json = br#"{
            "specversion" : "1.0", "type" : "com.github.pull_request.opened", "source" : "https://github.com/cloudevents/spec/pull",
            "subject" : "123", "id" : "A234-1234-1234", "time" : "2018-04-05T17:31:00Z", "comexampleextension1" : "value",
            "comexampleothervalue" : 5, "datacontenttype" : "text/xml", "data" : "<much wow=\"xml\"/>"
        }"#;
        let e = CloudEvent::from_json_slice(json).unwrap();
        assert_eq!(e.data, Some(Data::Text("<much wow=\"xml\"/>".into())));
        assert_eq!(e.extensions.get("comexampleothervalue"), Some(&ExtensionValue::Integer(5)));
        assert_eq!(CloudEvent::from_json_slice(e.to_json_string().as_bytes()).unwrap(), e);
    }

    #[test]
    fn numbers_in_json_data_keep_their_value_through_re_encoding() {
        // Found by the cloudevents_amqp fuzz target: parsed with serde_json's fast float path, this number came
        // back one unit in the last place smaller after one re-encoding (the float_roundtrip feature fixes it).
        let json = br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":77777777666000000001634371934}"#;
        let e = CloudEvent::from_json_slice(json).unwrap();
        let again = CloudEvent::from_json_slice(e.to_json_string().as_bytes()).unwrap();
        assert_eq!(again, e);
        assert_eq!(CloudEvent::from_json_slice(again.to_json_string().as_bytes()).unwrap(), e);
    }

    #[test]
    fn binary_data_travels_as_base64() {
        let e = CloudEvent {
            id: "1".into(),
            source: "/s".into(),
            ty: "t".into(),
            data: Some(Data::Binary(vec![0, 159, 146, 150])),
            ..CloudEvent::default()
        };
        let v = e.to_json_value();
        assert_eq!(v["data_base64"], "AJ+Slg==");
        assert_eq!(CloudEvent::from_json_value(v).unwrap(), e);
    }

    #[test]
    fn malformed_events_are_refused_with_a_reason() {
        let cases: [(&[u8], CloudEventError); 5] = [
            (br#"{"id":"1","source":"/s","type":"t"}"#, CloudEventError::MissingAttribute("specversion")),
            (
                br#"{"specversion":"0.3","id":"1","source":"/s","type":"t"}"#,
                CloudEventError::UnsupportedSpecVersion("0.3".into()),
            ),
            (br#"{"specversion":"1.0","source":"/s","type":"t"}"#, CloudEventError::MissingAttribute("id")),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","Bad":1}"#,
                CloudEventError::InvalidAttributeName("Bad".into()),
            ),
            (
                br#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data":1,"data_base64":"AA=="}"#,
                CloudEventError::InvalidData("both data and data_base64 are present"),
            ),
        ];
        for (json, err) in cases {
            assert_eq!(CloudEvent::from_json_slice(json), Err(err));
        }
        assert!(matches!(CloudEvent::from_json_slice(b"[1]"), Err(CloudEventError::InvalidJson(_))));
        assert!(matches!(CloudEvent::from_json_slice(b"{"), Err(CloudEventError::InvalidJson(_))));
    }
}
