//! Packer (`amazon-ebs`) option names a migrating user is likely to write, with where their
//! equivalent lives in a bake recipe: the help text for such an unknown key.

/// Packer names a migrating user is likely to write, with where they live in bake.
pub(super) fn packer_hint(key: &str) -> Option<&'static str> {
    Some(match key {
        "region" => {
            "bake has no region key: it uses the region of your AWS configuration (AWS_REGION, AWS_PROFILE, ~/.aws/config)"
        }
        "access_key" | "secret_key" | "profile" | "token" => {
            "bake takes credentials from the standard AWS configuration (environment, profile, SSO, instance role), never from a recipe"
        }
        "source_ami" => "write the AMI id as [source] ami = \"ami-…\"",
        "source_ami_filter" => "write a [source.filter] table with owners, name, architecture",
        "ami_name" => "write [image] name = \"{recipe}-{timestamp}\"",
        "ami_description" => "write [image] description = \"…\"",
        "ssh_username" => "write [ssh] username = \"…\"",
        "ssh_port" => "write [ssh] port = 22",
        "ssh_interface" => "write [ssh] interface = \"private_ip\"",
        "ssh_timeout" => "write [ssh] timeout = \"5m\"",
        "provisioner" | "provisioners" | "inline" => {
            "write each command as a [[step]] (run = \"…\") and each file as an [[upload]]"
        }
        "launch_block_device_mappings" => "write [builder.root_volume] size_gb, type, encrypted, …",
        "vpc_id" => "bake takes the VPC from builder.subnet_id (or the default VPC)",
        "tags" => {
            "image tags go in [image] tags = { … }; builder instance tags in [builder] run_tags"
        }
        _ => return None,
    })
}
