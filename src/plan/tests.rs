//! The fingerprint's contract: what changes it, what leaves it alone, and how its inputs are
//! recorded and compared.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::recipe::model::*;

pub(crate) fn sample(dir: &std::path::Path) -> Recipe {
    Recipe {
        path: dir.join("r.toml"),
        dir: dir.to_path_buf(),
        name: "web".into(),
        description: None,
        communicator: CommunicatorKind::Ssh,
        source: Source::Ami("ami-12345678".into()),
        builder: Builder {
            instance_type: "t3.micro".into(),
            subnet_id: None,
            security_group_ids: vec![],
            ssh_ingress_cidrs: vec![],
            iam_instance_profile: None,
            user_data: None,
            associate_public_ip: None,
            run_tags: BTreeMap::new(),
            root_volume: RootVolume::default(),
            max_lifetime: Duration::from_secs(7200),
            imds: Imds::V2,
        },
        ssh: Ssh {
            username: "admin".into(),
            port: 22,
            interface: SshInterface::PrivateIp,
            timeout: Duration::from_secs(60),
        },
        ssm: None,
        uploads: vec![Upload {
            source: dir.join("files"),
            is_dir: true,
            destination: "/opt/app".into(),
            mode: None,
            owner: None,
            before: None,
        }],
        steps: vec![Step {
            name: "one".into(),
            body: StepBody::Run("echo hi".into()),
            sudo: true,
            env: BTreeMap::new(),
            workdir: None,
            timeout: Duration::from_secs(60),
            retries: 0,
            reboot: false,
            checkpoint: false,
        }],
        tests: vec![],
        image: Image {
            name: "{recipe}-{hash}".into(),
            description: None,
            tags: BTreeMap::new(),
            snapshot_tags: BTreeMap::new(),
            distribution: Default::default(),
        },
        deploy: None,
        secrets: vec![],
    }
}

fn setup() -> (tempfile::TempDir, Recipe) {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("files/sub")).unwrap();
    std::fs::write(d.path().join("files/a.txt"), b"alpha").unwrap();
    std::fs::write(d.path().join("files/sub/b.txt"), b"beta").unwrap();
    let r = sample(d.path());
    (d, r)
}

fn fp(r: &Recipe, ami: &str) -> Fingerprint {
    let plans = plan_uploads(&r.uploads, &HashCache::disabled()).unwrap();
    compute(r, ami, &plans, &read_scripts(r).unwrap())
}

#[test]
fn stable_for_same_inputs() {
    let (_d, r) = setup();
    assert_eq!(fp(&r, "ami-1"), fp(&r, "ami-1"));
    assert_eq!(fp(&r, "ami-1").hash.len(), 64);
}

#[test]
fn one_byte_of_an_upload_changes_it() {
    let (d, r) = setup();
    let before = fp(&r, "ami-1");
    std::fs::write(d.path().join("files/sub/b.txt"), b"betb").unwrap();
    let after = fp(&r, "ami-1");
    assert_ne!(before.hash, after.hash);
    assert_eq!(
        diff_inputs(&after, &encode_inputs(&before)),
        vec!["upload:/opt/app changed"]
    );
}

#[test]
fn source_ami_changes_it() {
    let (_d, r) = setup();
    let a = fp(&r, "ami-1");
    let b = fp(&r, "ami-2");
    assert_ne!(a.hash, b.hash);
    assert_eq!(diff_inputs(&b, &encode_inputs(&a)), vec!["source changed"]);
}

#[test]
fn build_only_settings_do_not_change_it() {
    let (_d, mut r) = setup();
    let a = fp(&r, "ami-1");
    r.builder.instance_type = "c7i.large".into();
    r.steps[0].timeout = Duration::from_secs(5);
    r.image.tags.insert("team".into(), "x".into());
    assert_eq!(a, fp(&r, "ami-1"));
}

#[test]
fn step_changes_and_additions_are_named() {
    let (_d, mut r) = setup();
    let a = fp(&r, "ami-1");
    r.steps[0].body = StepBody::Run("echo bye".into());
    let mut extra = r.steps[0].clone();
    extra.name = "two".into();
    r.steps.push(extra);
    let b = fp(&r, "ami-1");
    assert_eq!(
        diff_inputs(&b, &encode_inputs(&a)),
        vec!["step:one changed", "step:two added"]
    );
    r.steps.clear();
    let c = fp(&r, "ami-1");
    assert_eq!(
        diff_inputs(&c, &encode_inputs(&a)),
        vec!["1 input(s) removed"]
    );
}

#[test]
fn mode_change_changes_it() {
    use std::os::unix::fs::PermissionsExt;
    let (d, r) = setup();
    let a = fp(&r, "ami-1");
    std::fs::set_permissions(
        d.path().join("files/a.txt"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    assert_ne!(a.hash, fp(&r, "ami-1").hash);
}

#[test]
fn encoded_inputs_fit_tag_values() {
    let (_d, mut r) = setup();
    for i in 0..60 {
        let mut s = r.steps[0].clone();
        s.name = format!("step-{i}");
        r.steps.push(s);
    }
    let f = fp(&r, "ami-1");
    let enc = encode_inputs(&f);
    assert!(enc.len() > 1);
    assert!(enc.iter().all(|v| v.len() <= 256));
    assert!(diff_inputs(&f, &enc).is_empty());
}

#[test]
fn hash_cache_reuses_and_notices_changes() {
    let (d, r) = setup();
    let cache_file = d.path().join("cache/hashes");
    let cache = HashCache::open(cache_file.clone());
    let p1 = plan_uploads(&r.uploads, &cache).unwrap();
    // A cache entry with a wrong hash proves the cache is consulted...
    let a = d.path().join("files/a.txt");
    let meta = std::fs::metadata(&a).unwrap();
    let reopened = HashCache::open(cache_file.clone());
    assert_eq!(
        reopened.get(&a, &meta),
        p1[0]
            .entries
            .iter()
            .find(|e| e.rel == "a.txt")
            .unwrap()
            .sha256
    );
    // ...and any change of the file invalidates it.
    std::thread::sleep(Duration::from_millis(10));
    std::fs::write(&a, b"alphb").unwrap();
    let meta2 = std::fs::metadata(&a).unwrap();
    assert_eq!(reopened.get(&a, &meta2), None);
    // A corrupt cache file costs nothing but time.
    std::fs::write(&cache_file, "garbage\nzz 1 2\n").unwrap();
    let p2 = plan_uploads(&r.uploads, &HashCache::open(cache_file)).unwrap();
    assert_ne!(
        p1[0]
            .entries
            .iter()
            .find(|e| e.rel == "a.txt")
            .unwrap()
            .sha256,
        p2[0]
            .entries
            .iter()
            .find(|e| e.rel == "a.txt")
            .unwrap()
            .sha256
    );
}

#[test]
fn directory_entries_are_sorted_and_complete() {
    let (_d, r) = setup();
    let plans = plan_uploads(&r.uploads, &HashCache::disabled()).unwrap();
    let rels: Vec<_> = plans[0].entries.iter().map(|e| e.rel.as_str()).collect();
    assert_eq!(rels, vec!["a.txt", "sub", "sub/b.txt"]);
    let _ = PathBuf::new();
}

#[test]
fn tests_have_their_own_fingerprint_apart_from_the_image() {
    let (_d, mut r) = setup();
    let scripts = read_scripts(&r).unwrap();
    let image_before = compute(&r, "ami-1", &[], &scripts);
    let step = r.steps[0].clone();
    r.tests = vec![Test {
        step: Step {
            name: "user".into(),
            body: StepBody::Run("id -u web".into()),
            ..step
        },
        expect_output: None,
    }];
    let t1 = tests_fingerprint(&r, &read_test_scripts(&r).unwrap());
    // A test changes: the tests' fingerprint does, the image's does not.
    r.tests[0].expect_output = Some("^9".into());
    let t2 = tests_fingerprint(&r, &read_test_scripts(&r).unwrap());
    assert_ne!(t1, t2);
    assert_eq!(compute(&r, "ami-1", &[], &scripts), image_before);
    // Retries and timeouts decide how a test runs, not whether it passes.
    r.tests[0].step.retries = 5;
    assert_eq!(tests_fingerprint(&r, &read_test_scripts(&r).unwrap()), t2);
}

#[test]
fn the_version_is_part_of_the_fingerprint() {
    let (_d, r) = setup();
    let f = fp(&r, "ami-1");
    // The hash is the version line plus the components; another version gives another hash
    // for the very same inputs, so an image fingerprinted by an older bake never matches.
    assert_eq!(f.hash, combine(VERSION, &f.components));
    assert_ne!(f.hash, combine(VERSION - 1, &f.components));
    let mut manual = Sha256::new();
    manual.update(format!("bake-fingerprint v{VERSION}\n").as_bytes());
    for (name, d) in &f.components {
        manual.update(format!("{name}\0{d}\n").as_bytes());
    }
    assert_eq!(f.hash, hex::encode(manual.finalize()));
    assert_eq!(
        VERSION, 2,
        "version 2 introduced segmented digests of large files"
    );
}

#[test]
fn a_large_upload_is_fingerprinted_by_its_segmented_digest() {
    let (d, mut r) = setup();
    let big = d.path().join("big.bin");
    let bytes: Vec<u8> = (0..(digest::SEGMENT + 1))
        .map(|i| (i % 251) as u8)
        .collect();
    std::fs::write(&big, &bytes).unwrap();
    r.uploads = vec![Upload {
        source: big.clone(),
        is_dir: false,
        destination: "/opt/big.bin".into(),
        mode: None,
        owner: None,
        before: None,
    }];
    let plans = plan_uploads(&r.uploads, &HashCache::disabled()).unwrap();
    let got = plans[0].entries[0].sha256.unwrap();
    let plain: [u8; 32] = Sha256::digest(&bytes).into();
    assert_ne!(got, plain);
    let segs = [
        hex::encode(Sha256::digest(&bytes[..digest::SEGMENT as usize])),
        hex::encode(Sha256::digest(&bytes[digest::SEGMENT as usize..])),
    ];
    assert_eq!(got, digest::combine(segs.iter().map(String::as_str)));
    // Stable across runs and planning paths.
    assert_eq!(fp(&r, "ami-1"), fp(&r, "ami-1"));
}
