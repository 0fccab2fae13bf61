//! The `--manifest` file, in Packer's own manifest format (post-processor "manifest"), so
//! tools written against Packer's read bake's: `builds[]` with `name`, `builder_type`,
//! `build_time`, `files`, `artifact_id` (`region:ami,…`), `packer_run_uuid` (one per
//! invocation, shared by its builds), `custom_data` (a string map, as Packer's Go type has
//! it), and `last_run_uuid`. Earlier runs' entries are kept; the file is replaced atomically.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::json;

use crate::pipeline::BuildResult;

/// One build as the manifest records it.
pub struct Entry {
    pub name: String,
    pub artifact_id: String,
    pub custom_data: BTreeMap<String, String>,
}

impl From<&BuildResult> for Entry {
    fn from(b: &BuildResult) -> Entry {
        let custom_data = BTreeMap::from([
            ("fingerprint".to_string(), b.fingerprint.clone()),
            ("cached".to_string(), b.cached.to_string()),
            ("ami_name".to_string(), b.ami_name.clone()),
            ("source_ami".to_string(), b.source_ami.clone()),
            ("build_id".to_string(), b.build_id.clone()),
        ]);
        Entry {
            name: b.recipe.clone(),
            artifact_id: b.artifact_id(),
            custom_data,
        }
    }
}

/// A random RFC 4122 version 4 UUID, as Packer's run uuid is.
pub fn run_uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Appends this run's builds to the manifest at `path` (created if missing). The new content
/// is written to a temp file of its own beside it and renamed over it, so a reader never sees
/// half a file and two runs never share a temp file.
pub fn append(path: &Path, run_uuid: &str, builds: &[Entry]) -> std::io::Result<()> {
    let mut doc: serde_json::Value = std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|d: &serde_json::Value| d["builds"].is_array())
        .unwrap_or_else(|| json!({ "builds": [] }));
    let now = jiff::Timestamp::now().as_second();
    if let Some(arr) = doc["builds"].as_array_mut() {
        for b in builds {
            arr.push(json!({
                "name": b.name,
                "builder_type": "bake.amazon-ebs",
                "build_time": now,
                "files": null,
                "artifact_id": b.artifact_id,
                "packer_run_uuid": run_uuid,
                "custom_data": b.custom_data,
            }));
        }
    }
    doc["last_run_uuid"] = json!(run_uuid);
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let file = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("manifest");
    let tmp_name = format!(
        ".{file}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    );
    let tmp = dir.map_or_else(|| tmp_name.clone().into(), |d| d.join(&tmp_name));
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str) -> Entry {
        Entry {
            name: name.into(),
            artifact_id: "us-east-1:ami-1,us-west-2:ami-2".into(),
            custom_data: BTreeMap::from([("cached".into(), "false".into())]),
        }
    }

    #[test]
    fn one_uuid_per_run_string_custom_data_and_earlier_runs_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("manifest.json");
        let first = run_uuid();
        append(&path, &first, &[entry("a"), entry("b")]).unwrap();
        let second = run_uuid();
        assert_ne!(first, second);
        append(&path, &second, &[entry("c")]).unwrap();
        let doc: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let builds = doc["builds"].as_array().unwrap();
        let uuids: Vec<&str> = builds
            .iter()
            .map(|b| b["packer_run_uuid"].as_str().unwrap())
            .collect();
        assert_eq!(uuids, [first.as_str(), &first, &second]);
        assert_eq!(doc["last_run_uuid"], second.as_str());
        for b in builds {
            assert!(
                b["custom_data"]
                    .as_object()
                    .unwrap()
                    .values()
                    .all(|v| v.is_string())
            );
            assert_eq!(b["artifact_id"], "us-east-1:ami-1,us-west-2:ami-2");
        }
        // Nothing but the manifest is left beside it.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["manifest.json"]);
    }

    #[test]
    fn run_uuids_are_version_4() {
        let u = run_uuid();
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
        assert!(matches!(&u[19..20], "8" | "9" | "a" | "b"), "{u}");
    }
}
