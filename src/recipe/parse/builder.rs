//! `[builder]` and `[builder.root_volume]`: the temporary instance (type, network, profile,
//! user data, run tags) and its root volume (size, type, encryption, iops, throughput).

use super::super::checks;
use super::super::model::{Builder, Imds, RootVolume};
use super::sensitive::Exposed;
use super::walker::{Cx, Sp, Span, Tbl};

pub(super) const BUILDER_KEYS: &[&str] = &[
    "instance_type",
    "subnet_id",
    "security_group_ids",
    "ssh_ingress_cidrs",
    "iam_instance_profile",
    "user_data",
    "user_data_file",
    "associate_public_ip",
    "run_tags",
    "root_volume",
    "max_lifetime",
    "imds",
];
pub(super) const ROOT_VOLUME_KEYS: &[&str] = &[
    "size_gb",
    "type",
    "encrypted",
    "kms_key_id",
    "iops",
    "throughput",
];
pub(super) const VOLUME_TYPES: &[&str] = &["gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"];

/// The builder, and the span of `ssh_ingress_cidrs` when given (for communicator checks).
pub(super) fn builder(cx: &mut Cx<'_>, root: &Tbl<'_, '_>) -> Option<(Builder, Option<Span>)> {
    let Some(t) = cx.table(root, "builder", "[builder]".to_string()) else {
        if cx.get(root, "builder").is_none() {
            cx.err(
                Some(cx.top_span()),
                "the recipe has no [builder] section",
                "add [builder] with instance_type = \"t3.micro\"",
            );
        }
        return None;
    };
    cx.keys(&t, BUILDER_KEYS);
    let n0 = cx.errors.len();
    let instance_type = cx.req_string(&t, "instance_type", "\"t3.micro\"");
    if let Some(it) = &instance_type
        && let Err(p) = checks::check_instance_type(&it.v)
    {
        cx.problem(&it.span, &it.v, p);
    }
    let subnet_id = cx.string(&t, "subnet_id");
    if let Some(s) = &subnet_id
        && let Err(p) = checks::check_resource_id(&s.v, "subnet", "subnet")
    {
        cx.problem(&s.span, &s.v, p);
    }
    let sgs = cx.string_list(&t, "security_group_ids");
    if let Some(list) = &sgs {
        for s in &list.v {
            if let Err(p) = checks::check_resource_id(&s.v, "sg", "security group") {
                cx.problem(&s.span, &s.v, p);
            }
        }
    }
    let cidrs = cx.string_list(&t, "ssh_ingress_cidrs");
    let mut cidr_span = None;
    if let Some(list) = &cidrs {
        cidr_span = Some(
            cx.get(&t, "ssh_ingress_cidrs")
                .map(|(k, _)| k)
                .unwrap_or(list.span.clone()),
        );
        for c in &list.v {
            if let Err(p) = checks::check_cidr(&c.v) {
                cx.problem(&c.span, &c.v, p);
            }
        }
        if let Some(sgs) = &sgs
            && !sgs.v.is_empty()
            && !list.v.is_empty()
        {
            cx.err(
                cidr_span.clone(),
                "`ssh_ingress_cidrs` only applies to the temporary security group, but `security_group_ids` is set",
                "remove ssh_ingress_cidrs and allow SSH in your own security groups, or remove security_group_ids to let bake create a temporary group",
            );
        }
    }
    let iam = cx.string(&t, "iam_instance_profile");
    if let Some(i) = &iam
        && let Err(p) = checks::check_instance_profile(&i.v)
    {
        cx.problem(&i.span, &i.v, p);
    }
    let ud = cx.string(&t, "user_data");
    if let Some(u) = &ud {
        cx.no_sensitive(&u.span, "`user_data` in [builder]", Exposed::UserData);
    }
    let udf = cx.string(&t, "user_data_file");
    let mut user_data = None;
    match (ud, udf) {
        (Some(_), Some(f)) => cx.err(
            Some(f.span),
            "[builder] has both `user_data` and `user_data_file`",
            "keep one: inline user_data = \"…\" or user_data_file = \"path\"",
        ),
        (Some(u), None) => user_data = Some(u),
        (None, Some(f)) => {
            if let Some((p, is_dir)) = cx.existing_path("user_data_file", &f) {
                if is_dir {
                    cx.err(
                        Some(f.span.clone()),
                        format!("user_data_file `{}` is a directory ({})", f.v, p.display()),
                        "point it at a file",
                    );
                } else {
                    match std::fs::read_to_string(&p) {
                        Ok(s) => {
                            user_data = Some(Sp {
                                v: s,
                                span: f.span.clone(),
                            });
                        }
                        Err(e) => cx.err(
                            Some(f.span.clone()),
                            format!("cannot read user_data_file {}: {e}", p.display()),
                            "user data must be a readable UTF-8 text file",
                        ),
                    }
                }
            }
        }
        (None, None) => {}
    }
    if let Some(u) = &user_data
        && u.v.len() > 16384
    {
        cx.err(
            Some(u.span.clone()),
            format!("user data is {} bytes; EC2 allows 16384", u.v.len()),
            "shrink it (compress it with gzip, or move the work into a [[step]])",
        );
    }
    let associate_public_ip = cx.boolean(&t, "associate_public_ip");
    let run_tags = cx.tags(&t, "run_tags");
    let root_volume = match cx.table(&t, "root_volume", "[builder.root_volume]".to_string()) {
        Some(rv) => root_volume(cx, &rv),
        None => RootVolume::default(),
    };
    let max_lifetime = cx.duration(&t, "max_lifetime");
    if let Some(m) = &max_lifetime
        && m.v < std::time::Duration::from_secs(10)
    {
        cx.err(
            Some(m.span.clone()),
            "max_lifetime is shorter than 10s",
            "the builder powers itself off after max_lifetime; give it time to be built, e.g. \"2h\"",
        );
    }
    let imds = match cx.string(&t, "imds") {
        None => Imds::V2,
        Some(v) if v.v == "v2" => Imds::V2,
        Some(v) if v.v == "v1-allowed" => Imds::V1Allowed,
        Some(v) => {
            cx.err(
                Some(v.span.clone()),
                format!("unknown imds `{}`", v.v),
                "use \"v2\" (IMDSv2 only, the default) or \"v1-allowed\"",
            );
            Imds::V2
        }
    };
    if cx.errors.len() > n0 {
        return None;
    }
    Some((
        Builder {
            max_lifetime: max_lifetime
                .map(|m| m.v)
                .unwrap_or(std::time::Duration::from_secs(2 * 3600)),
            imds,
            instance_type: instance_type?.v,
            subnet_id: subnet_id.map(|s| s.v),
            security_group_ids: sgs
                .map(|l| l.v.into_iter().map(|s| s.v).collect())
                .unwrap_or_default(),
            ssh_ingress_cidrs: cidrs
                .map(|l| l.v.into_iter().map(|s| s.v).collect())
                .unwrap_or_default(),
            iam_instance_profile: iam.map(|s| s.v),
            user_data: user_data.map(|u| u.v),
            associate_public_ip,
            run_tags,
            root_volume,
        },
        cidr_span,
    ))
}

pub(super) fn root_volume(cx: &mut Cx<'_>, t: &Tbl<'_, '_>) -> RootVolume {
    cx.keys(t, ROOT_VOLUME_KEYS);
    let size_gb = cx.integer(t, "size_gb", 1, 16384);
    let vtype = cx.string(t, "type");
    let mut volume_type = None;
    if let Some(v) = &vtype {
        if VOLUME_TYPES.contains(&v.v.as_str()) {
            volume_type = Some(v.v.clone());
        } else {
            let help = match checks::suggest(&v.v, VOLUME_TYPES) {
                Some(s) => format!(
                    "did you mean \"{s}\"? Volume types: {}",
                    VOLUME_TYPES.join(", ")
                ),
                None => format!("use one of {}", VOLUME_TYPES.join(", ")),
            };
            cx.err(
                Some(v.span.clone()),
                format!("unknown volume type `{}`", v.v),
                help,
            );
        }
    }
    let encrypted = cx.boolean(t, "encrypted");
    let kms = cx.string(t, "kms_key_id");
    if let Some(k) = &kms {
        if let Err(p) = checks::check_kms_key(&k.v) {
            cx.problem(&k.span, &k.v, p);
        }
        if encrypted == Some(false) {
            cx.err(
                Some(k.span.clone()),
                "`kms_key_id` is set but `encrypted = false`",
                "set encrypted = true (or remove kms_key_id)",
            );
        }
    }
    let iops = cx.integer(t, "iops", 100, 256_000);
    let throughput = cx.integer(t, "throughput", 125, 2000);
    let vt = volume_type.as_deref().unwrap_or("gp3");
    if let Some(i) = &iops {
        let range = match vt {
            "gp3" => Some((3000, 80_000)),
            "io1" => Some((100, 64_000)),
            "io2" => Some((100, 256_000)),
            _ => None,
        };
        match range {
            None => cx.err(
                Some(i.span.clone()),
                format!("`iops` does not apply to {vt} volumes"),
                "remove iops, or use type = \"gp3\", \"io1\" or \"io2\"",
            ),
            Some((lo, hi)) if !(lo..=hi).contains(&i.v) => cx.err(
                Some(i.span.clone()),
                format!("{vt} volumes take {lo}–{hi} iops, not {}", i.v),
                format!("use a value from {lo} to {hi}"),
            ),
            _ => {}
        }
    } else if matches!(vt, "io1" | "io2")
        && let Some(v) = &vtype
    {
        cx.err(
            Some(v.span.clone()),
            format!("{vt} volumes need `iops`"),
            "add iops = 3000 (or the rate you provisioned for)",
        );
    }
    if let Some(tp) = &throughput
        && vt != "gp3"
    {
        cx.err(
            Some(tp.span.clone()),
            format!("`throughput` only applies to gp3 volumes, not {vt}"),
            "remove throughput, or use type = \"gp3\"",
        );
    }
    RootVolume {
        size_gb: size_gb.map(|s| s.v as u32),
        volume_type,
        encrypted,
        kms_key_id: kms.map(|k| k.v),
        iops: iops.map(|i| i.v as u32),
        throughput: throughput.map(|t| t.v as u32),
    }
}
