//! Resolving the recipe's source to one AMI: an id is checked to exist; a filter picks the
//! newest matching image, like Packer's `most_recent = true`.

use aws_sdk_ec2::Client;

use super::BuildError;
use crate::aws::Ctx;
use crate::aws::ec2::filter;
use crate::recipe::model::Source;

#[derive(Debug, Clone)]
pub struct SourceImage {
    pub id: String,
    pub name: Option<String>,
    pub root_device: Option<String>,
    pub architecture: Option<String>,
}

pub async fn resolve(ec2: &Client, source: &Source) -> Result<SourceImage, BuildError> {
    let images = match source {
        Source::Ami(id) => {
            let out = ec2
                .describe_images()
                .image_ids(id)
                .send()
                .await
                .ctx("DescribeImages", Some(id));
            match out {
                Ok(o) => o.images().to_vec(),
                Err(e) if e.is_not_found() || e.code_is(&["InvalidAMIID.Malformed"]) => vec![],
                Err(e) => return Err(e.into()),
            }
        }
        Source::Filter(f) => {
            let mut req = ec2
                .describe_images()
                .set_owners(Some(f.owners.clone()))
                .filters(filter("state", ["available"]));
            if let Some(n) = &f.name {
                req = req.filters(filter("name", [n.as_str()]));
            }
            if let Some(a) = &f.architecture {
                req = req.filters(filter("architecture", [a.as_str()]));
            }
            for (k, v) in &f.filters {
                req = req.filters(filter(k, v.iter().cloned()));
            }
            req.send()
                .await
                .ctx("DescribeImages", Some("source filter"))?
                .images()
                .to_vec()
        }
    };
    // ISO-8601 creation dates sort as strings.
    let newest = images
        .into_iter()
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    match newest {
        Some(img) => Ok(SourceImage {
            id: img.image_id().unwrap_or_default().to_string(),
            name: img.name().map(str::to_string),
            root_device: img.root_device_name().map(str::to_string),
            architecture: img.architecture().map(|a| a.as_str().to_string()),
        }),
        None => Err(BuildError::Source(match source {
            Source::Ami(id) => {
                format!("{id} does not exist in this region or is not visible to this account")
            }
            Source::Filter(f) => format!(
                "no available image matches owners {:?}{}{}",
                f.owners,
                f.name
                    .as_ref()
                    .map(|n| format!(", name {n:?}"))
                    .unwrap_or_default(),
                f.architecture
                    .as_ref()
                    .map(|a| format!(", architecture {a}"))
                    .unwrap_or_default()
            ),
        })),
    }
}
