//! `[[upload]]`: local files and directories copied onto the builder (source that must exist,
//! absolute destination, octal mode, owner, and the step it is made `before`).

use toml::de::DeValue;

use super::super::checks;
use super::super::model::{Step, Upload};
use super::walker::{Cx, Tbl};

pub(super) const UPLOAD_KEYS: &[&str] = &["source", "destination", "mode", "owner", "before"];

/// The uploads, each checked against `steps` (already parsed) for its `before`.
pub(super) fn uploads(cx: &mut Cx<'_>, root: &Tbl<'_, '_>, steps: &[Step]) -> Vec<Upload> {
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    let mut out = Vec::new();
    for t in cx.array_of_tables(root, "upload") {
        cx.keys(&t, UPLOAD_KEYS);
        let source = cx.req_string(&t, "source", "\"files/app.tar.gz\"");
        let found = source
            .as_ref()
            .and_then(|s| cx.existing_path("upload source", s));
        let dest = cx.req_string(&t, "destination", "\"/opt/app/app.tar.gz\"");
        let mut dest_ok = dest
            .as_ref()
            .is_some_and(|d| cx.absolute_remote(&t, "destination", d));
        if let (Some((p, false)), Some(d)) = (&found, &dest)
            && dest_ok
            && d.v.ends_with('/')
        {
            let file = p
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            let shown = source.as_ref().map_or("", |s| s.v.as_str());
            cx.err(
                Some(d.span.clone()),
                format!("`destination` for the file `{shown}` ends with /"),
                format!(
                    "for a file, destination is the full path of the file on the builder: destination = \"{}{file}\"",
                    d.v
                ),
            );
            dest_ok = false;
        }
        let mode = match cx.get(&t, "mode") {
            Some((_, v)) => match v.get_ref() {
                DeValue::String(_) => {
                    cx.string(&t, "mode")
                        .and_then(|m| match checks::parse_mode(&m.v) {
                            Ok(x) => Some(Some(x)),
                            Err(p) => {
                                cx.problem(&m.span, &m.v, p);
                                None
                            }
                        })
                }
                DeValue::Integer(i) => {
                    let lit = i.as_str().to_string();
                    cx.wrong_type(
                        &t,
                        "mode",
                        v,
                        "an octal string",
                        format!(
                            "quote it: mode = \"{lit}\" (a bare {lit} would be read as decimal)"
                        ),
                    );
                    None
                }
                _ => {
                    cx.wrong_type(
                        &t,
                        "mode",
                        v,
                        "an octal string",
                        "write mode = \"0644\"".to_string(),
                    );
                    None
                }
            },
            None => Some(None),
        };
        let owner = cx.string(&t, "owner");
        if let Some(o) = &owner
            && let Err(p) = checks::check_owner(&o.v)
        {
            cx.problem(&o.span, &o.v, p);
        }
        let before = cx.string(&t, "before");
        let mut before_ok = true;
        if let Some(b) = &before
            && !names.contains(&b.v.as_str())
        {
            before_ok = false;
            let help = match checks::suggest(&b.v, &names) {
                Some(s) => format!("did you mean before = \"{s}\"?"),
                None if names.is_empty() => {
                    "the recipe has no [[step]]: remove `before`".to_string()
                }
                None => format!(
                    "name one of the steps ({}), or remove `before` to upload before the first step",
                    names.join(", ")
                ),
            };
            cx.err(
                Some(b.span.clone()),
                format!(
                    "`before` names no step: there is no [[step]] named `{}`",
                    b.v
                ),
                help,
            );
        }
        if let (Some((source, is_dir)), Some(dest), true, Some(mode), true) =
            (found, dest, dest_ok, mode, before_ok)
        {
            out.push(Upload {
                source,
                is_dir,
                destination: dest.v,
                mode,
                owner: owner.map(|o| o.v),
                before: before.map(|b| b.v),
            });
        }
    }
    out
}
