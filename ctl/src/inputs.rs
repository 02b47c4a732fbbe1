//! Reading `-f` inputs: files, directories of manifests, or stdin.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};

use crate::manifest::{self, Document, ManifestError};

/// The text of one input and the name messages use for it.
pub struct Input {
    pub source: String,
    pub text: String,
}

const EXTENSIONS: [&str; 3] = ["yaml", "yml", "json"];

/// Reads every input named by `-f`: `-` is stdin; a directory contributes its
/// `*.yaml`, `*.yml` and `*.json` files in name order.
pub fn read_inputs(specs: &[String]) -> anyhow::Result<Vec<Input>> {
    let mut inputs = Vec::new();
    for spec in specs {
        if spec == "-" {
            let mut text = String::new();
            std::io::stdin()
                .take(manifest::MAX_INPUT_BYTES as u64 + 1)
                .read_to_string(&mut text)
                .context("<stdin>: cannot read UTF-8 text")?;
            inputs.push(Input {
                source: "<stdin>".into(),
                text,
            });
            continue;
        }
        let path = Path::new(spec);
        let meta = std::fs::metadata(path).with_context(|| format!("{spec}: cannot read"))?;
        if meta.is_dir() {
            let mut files: Vec<_> = std::fs::read_dir(path)
                .with_context(|| format!("{spec}: cannot list the directory"))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.is_file()
                        && p.extension()
                            .and_then(|e| e.to_str())
                            .is_some_and(|e| EXTENSIONS.contains(&e))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                bail!("{spec}: the directory has no *.yaml, *.yml or *.json file");
            }
            for file in files {
                inputs.push(read_file(&file)?);
            }
        } else {
            inputs.push(read_file(path)?);
        }
    }
    Ok(inputs)
}

fn read_file(path: &Path) -> anyhow::Result<Input> {
    let source = path.display().to_string();
    let size = std::fs::metadata(path)
        .with_context(|| format!("{source}: cannot read"))?
        .len();
    if size > manifest::MAX_INPUT_BYTES as u64 {
        bail!(
            "{source}: {size} bytes is more than the {}-byte limit for one input",
            manifest::MAX_INPUT_BYTES
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("{source}: cannot read"))?;
    let text =
        String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{source}: not UTF-8 text ({e})"))?;
    Ok(Input { source, text })
}

/// Parses every input; either every document, or every error of every input.
pub fn parse_all(
    inputs: &[Input],
    namespace: Option<&str>,
) -> Result<Vec<(String, Document)>, Vec<ManifestError>> {
    let mut documents = Vec::new();
    let mut errors = Vec::new();
    for input in inputs {
        match manifest::parse_documents(&input.source, &input.text, namespace) {
            Ok(docs) => documents.extend(docs.into_iter().map(|d| (input.source.clone(), d))),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(documents)
    } else {
        Err(errors)
    }
}
