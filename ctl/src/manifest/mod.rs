//! YAML manifests in the Kubernetes shape, to and from `berth.v1` objects.
//!
//! ```yaml
//! apiVersion: berth/v1
//! kind: Job
//! metadata: {name: web, namespace: default, labels: {app: web}}
//! spec: {tier: prod, replicas: 3, template: {image: …, resources: {cpu: 500m, memory: 256Mi}}}
//! ```
//!
//! Every field is checked: unknown fields, wrong types and bad quantities are
//! errors that name the file, the document and the field path
//! (`web.yaml: document 2: spec.template.resources.cpu: "5x" is not a quantity`).
//! The same types print objects back (`get -o yaml`), so what berthctl prints
//! can be applied again.

mod kinds;
pub mod values;

use std::fmt;

use berth_proto::{defaults, pb, validate};
use prost::Message;
use serde::Deserialize;

pub use kinds::Manifest;

pub const API_VERSION: &str = "berth/v1";

/// Larger inputs are refused before parsing.
pub const MAX_INPUT_BYTES: usize = 64 * 1024 * 1024;

/// One object read from a manifest.
#[derive(Debug, Clone)]
pub struct Document {
    /// 1-based position in its file.
    pub index: usize,
    pub object: pb::Object,
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestError {
    pub source: String,
    /// 1-based document number; `None` for problems with the whole input.
    pub document: Option<usize>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.document {
            Some(n) => write!(f, "{}: document {n}: {}", self.source, self.message),
            None => write!(f, "{}: {}", self.source, self.message),
        }
    }
}

impl std::error::Error for ManifestError {}

/// Parses every document of `text` (read from `source`, for messages), applies
/// defaults and validates each. Namespaced objects without a namespace get
/// `namespace` (else `default`); one with a different namespace is an error.
/// Empty documents are skipped. Returns every error found, not just the first.
pub fn parse_documents(
    source: &str,
    text: &str,
    namespace: Option<&str>,
) -> Result<Vec<Document>, Vec<ManifestError>> {
    let error = |document: Option<usize>, message: String| ManifestError {
        source: source.to_string(),
        document,
        message,
    };
    if text.len() > MAX_INPUT_BYTES {
        return Err(vec![error(
            None,
            format!(
                "{} bytes is more than the {MAX_INPUT_BYTES}-byte limit for one input",
                text.len()
            ),
        )]);
    }
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for (i, deserializer) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let index = i + 1;
        let value = match serde_yaml::Value::deserialize(deserializer) {
            Ok(value) => value,
            Err(e) => {
                // The parser cannot resynchronise after a syntax error.
                errors.push(error(Some(index), format!("YAML syntax error: {e}")));
                break;
            }
        };
        if value.is_null() {
            continue; // a comment-only document, or a trailing `---`
        }
        match parse_document(value, namespace) {
            Ok(object) => documents.push(Document { index, object }),
            Err(messages) => errors.extend(messages.into_iter().map(|m| error(Some(index), m))),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}

/// One document: envelope, body, conversion, size, defaults, validation.
fn parse_document(
    value: serde_yaml::Value,
    namespace: Option<&str>,
) -> Result<pb::Object, Vec<String>> {
    let serde_yaml::Value::Mapping(mut map) = value else {
        return Err(vec![format!(
            "expected a mapping with apiVersion, kind, metadata and spec, found {}",
            describe_value(&value)
        )]);
    };
    let api_version = map.remove("apiVersion");
    let kind = map.remove("kind");
    match api_version.as_ref().map(|v| v.as_str()) {
        Some(Some(API_VERSION)) => {}
        None => return Err(vec![format!("apiVersion: required ({API_VERSION})")]),
        Some(Some(other)) => {
            return Err(vec![format!(
                "apiVersion: {other:?} is not supported; use {API_VERSION}"
            )]);
        }
        Some(None) => {
            return Err(vec![format!(
                "apiVersion: must be the string {API_VERSION}"
            )]);
        }
    }
    let kind = match kind.as_ref().map(|v| v.as_str()) {
        None => {
            return Err(vec![
                "kind: required (Namespace, Node, Job, Task, Event or Lease)".into(),
            ]);
        }
        Some(None) => return Err(vec!["kind: must be a string such as Job".into()]),
        Some(Some(word)) => match pb::Kind::ALL.into_iter().find(|k| k.title() == word) {
            Some(kind) => kind,
            None => {
                return Err(vec![format!(
                    "kind: {word:?} is not a Berth kind (Namespace, Node, Job, Task, Event or Lease)"
                )]);
            }
        },
    };
    let manifest =
        Manifest::deserialize(kind, serde_yaml::Value::Mapping(map)).map_err(|e| vec![e])?;
    let mut object = manifest.into_object().map_err(|e| vec![e])?;
    let size = object.encoded_len();
    if size > validate::MAX_OBJECT_BYTES {
        return Err(vec![format!(
            "the object is {size} bytes, more than the limit of {} bytes",
            validate::MAX_OBJECT_BYTES
        )]);
    }
    if let Some(wanted) = namespace
        && object.kind().is_namespaced()
        && let Some(meta) = object.metadata_mut()
    {
        if meta.namespace.is_empty() {
            meta.namespace = wanted.to_string();
        } else if meta.namespace != wanted {
            return Err(vec![format!(
                "metadata.namespace: {:?} does not match the namespace {wanted:?} given with --namespace",
                meta.namespace
            )]);
        }
    }
    defaults::apply(&mut object);
    validate::validate_object(&object)
        .map_err(|e| e.0.into_iter().map(|f| f.to_string()).collect::<Vec<_>>())?;
    Ok(object)
}

fn describe_value(value: &serde_yaml::Value) -> &'static str {
    match value {
        serde_yaml::Value::Null => "nothing",
        serde_yaml::Value::Bool(_) => "a boolean",
        serde_yaml::Value::Number(_) => "a number",
        serde_yaml::Value::String(_) => "a string",
        serde_yaml::Value::Sequence(_) => "a list",
        serde_yaml::Value::Mapping(_) => "a mapping",
        serde_yaml::Value::Tagged(_) => "a tagged value",
    }
}

/// Deserializes `value` into `T`, naming the field path in the error.
fn from_value<T: serde::de::DeserializeOwned>(value: serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        }
    })
}

/// Prints objects as a YAML stream (`---` between documents) that `apply`
/// accepts again.
pub fn to_yaml(objects: &[pb::Object]) -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for (i, object) in objects.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(&Manifest::from_object(object))?);
    }
    Ok(out)
}

/// Prints objects as JSON: one object, or a `List` of several.
pub fn to_json(objects: &[pb::Object], single: bool) -> Result<String, serde_json::Error> {
    if single && objects.len() == 1 {
        return serde_json::to_string_pretty(&Manifest::from_object(&objects[0]));
    }
    let items: Vec<_> = objects.iter().map(Manifest::from_object).collect();
    serde_json::to_string_pretty(&serde_json::json!({
        "apiVersion": API_VERSION,
        "kind": "List",
        "items": items,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WEB: &str = r#"
apiVersion: berth/v1
kind: Job
metadata:
  name: web
  labels: {app: web}
spec:
  tier: prod
  replicas: 3
  template:
    image: berth-testapp:latest
    args: [serve, --port, "8080"]
    env: {LOG: info}
    ports: [{name: http, containerPort: 8080}]
    resources: {cpu: 500m, memory: 256Mi, extended: {gpu: 1}}
    healthCheck:
      http: {path: /healthz, port: 8080}
      period: 5s
  constraints:
    - {key: zone, operator: In, values: [a, b]}
  spread: {key: zone, maxSkew: 1}
"#;

    fn errors(text: &str) -> Vec<String> {
        parse_documents("web.yaml", text, None)
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn parses_a_job() {
        let docs = parse_documents("web.yaml", WEB, None).unwrap();
        assert_eq!(docs.len(), 1);
        let pb::Object {
            kind: Some(pb::object::Kind::Job(job)),
        } = &docs[0].object
        else {
            panic!("not a job")
        };
        let meta = job.metadata.as_ref().unwrap();
        assert_eq!(meta.namespace, "default");
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.tier(), pb::Tier::Prod);
        let template = spec.template.as_ref().unwrap();
        let resources = template.resources.as_ref().unwrap();
        assert_eq!(
            (resources.cpu_millis, resources.memory_bytes),
            (500, 256 << 20)
        );
        assert_eq!(resources.extended["gpu"], 1);
        assert_eq!(template.restart_policy(), pb::RestartPolicy::Always);
        assert_eq!(template.health_check.as_ref().unwrap().period_ms, 5000);
    }

    #[test]
    fn round_trips_through_yaml() {
        let docs = parse_documents("web.yaml", WEB, None).unwrap();
        let yaml = to_yaml(&[docs[0].object.clone()]).unwrap();
        let again = parse_documents("again.yaml", &yaml, None).unwrap();
        assert_eq!(again[0].object, docs[0].object, "{yaml}");
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let text = format!("{}---\n{}", WEB, WEB.replace("cpu: 500m", "cpu: 5x"));
        let errs = errors(&text);
        assert_eq!(errs.len(), 1);
        assert!(
            errs[0].starts_with(
                "web.yaml: document 2: spec.template.resources.cpu: \"5x\" is not a quantity"
            ),
            "{}",
            errs[0]
        );

        let errs = errors(&WEB.replace("replicas: 3", "replica: 3"));
        assert!(
            errs[0].contains("spec.replica: unknown field `replica`"),
            "{errs:?}"
        );

        let errs = errors(&WEB.replace("tier: prod", "tier: gold"));
        assert!(
            errs[0].contains("spec.tier: unknown variant `gold`"),
            "{errs:?}"
        );

        let errs = errors(&WEB.replace("kind: Job", "kind: Deployment"));
        assert!(
            errs[0].contains("kind: \"Deployment\" is not a Berth kind"),
            "{errs:?}"
        );

        let errs = errors(&WEB.replace("name: web", "name: Web_App"));
        assert!(
            errs[0].contains("metadata.name: \"Web_App\" is not a valid name"),
            "{errs:?}"
        );
    }

    #[test]
    fn skips_empty_documents() {
        let text = format!("---\n# just a comment\n---\n{WEB}---\n");
        assert_eq!(parse_documents("x", &text, None).unwrap().len(), 1);
    }
}
