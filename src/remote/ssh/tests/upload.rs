//! Uploads against the throwaway sshd of [`super`]: files, trees, parallel tar streams, the
//! `sudo`/`sha256sum` fallback, checksum mismatches, and the SFTP transport for large files.

use super::*;

#[tokio::test]
async fn upload_file_with_mode_and_owner_into_nested_path() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    // A small file (tar path) and a large one (raw stream path, two segments: see
    // plan::digest).
    let small = local.join("app.conf");
    std::fs::write(&small, b"listen 80\n").unwrap();
    let big = local.join("app.bin");
    let big_bytes: Vec<u8> = (0..40 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(&big, &big_bytes).unwrap();
    let small_dest = remote.join("opt/web/conf/app.conf");
    let big_dest = remote.join("opt/web/bin/app.bin");
    let plans = vec![
        plan(
            &small,
            small_dest.to_str().unwrap(),
            Some(0o640),
            Some("nobody:nogroup"),
        ),
        plan(
            &big,
            big_dest.to_str().unwrap(),
            Some(0o750),
            Some("nobody"),
        ),
    ];
    let (comm, sink) = connected(&sshd).await;
    comm.upload(&plans).await.unwrap();
    assert_eq!(std::fs::read(&small_dest).unwrap(), b"listen 80\n");
    assert_eq!(std::fs::read(&big_dest).unwrap(), big_bytes);
    let m = std::fs::metadata(&small_dest).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o640, 65534, 65534));
    let m = std::fs::metadata(&big_dest).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o750, 65534, 0));
    // Parents are created root-owned; no temp files are left behind.
    assert_eq!(
        std::fs::metadata(remote.join("opt/web/bin")).unwrap().uid(),
        0
    );
    assert_eq!(
        std::fs::read_dir(remote.join("opt/web/bin"))
            .unwrap()
            .count(),
        1
    );
    let total = (big_bytes.len() + 10) as u64;
    assert_eq!(*sink.progress.lock().unwrap(), Some((total, total)));

    // The same segmented file planned with another digest (as if a segment had been damaged
    // on the way): refused, the destination keeps what it had, no temp file or segment hash
    // is left.
    let mut p = plan(&big, big_dest.to_str().unwrap(), Some(0o750), None);
    p.entries[0].sha256 = Some([9u8; 32]);
    match comm.upload(&[p]).await {
        Err(CommError::Checksum { local, remote, .. }) => {
            assert_eq!(local, "09".repeat(32));
            assert_eq!(remote, hex::encode(digest_of(&big_bytes)));
        }
        other => panic!("expected a checksum error, got {other:?}"),
    }
    assert_eq!(std::fs::read(&big_dest).unwrap(), big_bytes);
    assert_eq!(
        std::fs::read_dir(remote.join("opt/web/bin"))
            .unwrap()
            .count(),
        1
    );
}

#[tokio::test]
async fn upload_directory_tree() {
    let sshd = Sshd::started();
    let src = sshd.scratch("local/site");
    std::fs::create_dir_all(src.join("a/b")).unwrap();
    std::fs::create_dir_all(src.join("empty")).unwrap();
    std::fs::write(src.join("a/b/c.txt"), b"deep\n").unwrap();
    std::fs::write(src.join("a/run.sh"), b"#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(src.join("a/run.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("index.html"), b"<html/>").unwrap();
    std::os::unix::fs::symlink("a/b/c.txt", src.join("link")).unwrap();
    let long = "n".repeat(120);
    std::fs::write(src.join(&long), b"long name").unwrap();
    let dest = sshd.scratch("remote").join("srv/site");
    let p = plan(&src, dest.to_str().unwrap(), None, None);
    let (comm, _sink) = connected(&sshd).await;
    comm.upload(&[p]).await.unwrap();
    assert_eq!(std::fs::read(dest.join("a/b/c.txt")).unwrap(), b"deep\n");
    assert_eq!(std::fs::read(dest.join(&long)).unwrap(), b"long name");
    assert_eq!(
        std::fs::metadata(dest.join("a/run.sh")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(dest.join("link")).unwrap(),
        Path::new("a/b/c.txt")
    );
    assert_eq!(std::fs::read(dest.join("link")).unwrap(), b"deep\n");
    assert!(std::fs::metadata(dest.join("empty")).unwrap().is_dir());
    assert_eq!(std::fs::metadata(dest.join("index.html")).unwrap().uid(), 0);

    // With a mode: files get it, directories get x where r is set.
    let dest2 = sshd.scratch("remote").join("srv/site2");
    comm.upload(&[plan(
        &src,
        dest2.to_str().unwrap(),
        Some(0o640),
        Some("nobody"),
    )])
    .await
    .unwrap();
    assert_eq!(
        std::fs::metadata(dest2.join("a/run.sh")).unwrap().mode() & 0o777,
        0o640
    );
    let d = std::fs::metadata(dest2.join("a/b")).unwrap();
    assert_eq!((d.mode() & 0o777, d.uid()), (0o750, 65534));
    assert_eq!(
        std::fs::symlink_metadata(dest2.join("link")).unwrap().uid(),
        65534
    );
    let root = std::fs::metadata(&dest2).unwrap();
    assert_eq!((root.mode() & 0o777, root.uid()), (0o750, 65534));

    // An existing destination that is a symlink to a directory stays a symlink.
    let real = sshd.scratch("remote/real-site");
    let linked = sshd.scratch("remote").join("linked-site");
    std::os::unix::fs::symlink(&real, &linked).unwrap();
    comm.upload(&[plan(&src, linked.to_str().unwrap(), None, None)])
        .await
        .unwrap();
    assert!(
        std::fs::symlink_metadata(&linked)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(std::fs::read(real.join("a/b/c.txt")).unwrap(), b"deep\n");
}

/// Enough files for two tar streams side by side: every directory still gets the recipe's
/// mode and owner whichever stream creates it, and a bad file in the last stream is caught.
#[tokio::test]
async fn many_files_unpack_as_parallel_streams() {
    let sshd = Sshd::started();
    let src = sshd.scratch("local/many");
    for d in 0..6 {
        let dir = src.join(format!("d{d}/sub"));
        std::fs::create_dir_all(&dir).unwrap();
        for f in 0..60 {
            std::fs::write(dir.join(format!("f{f:02}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let dest = sshd.scratch("remote").join("srv/many");
    let p = plan(&src, dest.to_str().unwrap(), Some(0o640), Some("nobody"));
    let files = p.entries.len();
    assert!(
        files >= super::super::upload::SPLIT_MIN_ENTRIES,
        "{files} files: one stream only"
    );
    let (comm, _sink) = connected(&sshd).await;
    comm.upload(&[p]).await.unwrap();
    for d in 0..6 {
        for sub in [format!("d{d}"), format!("d{d}/sub")] {
            let m = std::fs::metadata(dest.join(&sub)).unwrap();
            assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, 65534), "{sub}");
        }
        let f = dest.join(format!("d{d}/sub/f59"));
        assert_eq!(std::fs::read_to_string(&f).unwrap(), format!("{d}/59\n"));
        let m = std::fs::metadata(&f).unwrap();
        assert_eq!((m.mode() & 0o7777, m.uid()), (0o640, 65534));
    }
    let count = walkdir_files(&dest);
    assert_eq!(count, 360);

    let mut p = plan(&src, dest.to_str().unwrap(), None, None);
    let last = p.entries.last_mut().unwrap();
    last.sha256 = Some([2u8; 32]);
    let bad = last.rel.clone();
    let err = comm.upload(&[p]).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Checksum { path, .. } if path.ends_with(&bad)),
        "{err}"
    );
}

fn walkdir_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            if p.is_dir() { walkdir_files(&p) } else { 1 }
        })
        .sum()
}

/// The paths a non-root login without openssl takes: everything through `sudo -n`, hashes by
/// `sha256sum`.
#[tokio::test]
async fn sudo_and_sha256sum_fallback() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local/tree");
    std::fs::create_dir_all(local.join("sub")).unwrap();
    std::fs::write(local.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(local.join("big.bin"), vec![1u8; 17 * 1024 * 1024]).unwrap();
    let dest = sshd.scratch("remote").join("tree");
    let (mut comm, _sink) = connected(&sshd).await;
    comm.remote.sudo = "sudo -n ";
    comm.remote.openssl = false;
    comm.upload(&[plan(&local, dest.to_str().unwrap(), Some(0o600), None)])
        .await
        .unwrap();
    assert_eq!(std::fs::read(dest.join("sub/a.txt")).unwrap(), b"a");
    assert_eq!(
        std::fs::metadata(dest.join("big.bin")).unwrap().len(),
        17 << 20
    );
    let mut p = plan(&local, dest.to_str().unwrap(), None, None);
    for e in &mut p.entries {
        if e.rel == "sub/a.txt" {
            e.sha256 = Some([1u8; 32]);
        }
    }
    let err = comm.upload(&[p]).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Checksum { path, .. } if path.ends_with("sub/a.txt")),
        "{err}"
    );
}

#[tokio::test]
async fn checksum_mismatch_is_detected() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let small = local.join("small.txt");
    std::fs::write(&small, b"hello").unwrap();
    let big = local.join("big.bin");
    std::fs::write(&big, vec![7u8; 17 * 1024 * 1024]).unwrap();
    let (comm, _sink) = connected(&sshd).await;
    for (src, name) in [(&small, "small.txt"), (&big, "big.bin")] {
        let dest = remote.join(name);
        let mut p = plan(src, dest.to_str().unwrap(), None, None);
        p.entries[0].sha256 = Some([0u8; 32]);
        match comm.upload(&[p]).await {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, "0".repeat(64));
                assert_eq!(remote.len(), 64, "{remote}");
            }
            other => panic!("expected a checksum error for {name}, got {other:?}"),
        }
    }
    // A large file that fails verification never replaces the destination.
    assert!(!remote.join("big.bin").exists());
}

#[tokio::test]
async fn unknown_owner_is_an_error() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    std::fs::write(local.join("f"), b"x").unwrap();
    let dest = sshd.scratch("remote").join("f");
    let (comm, _sink) = connected(&sshd).await;
    let err = comm
        .upload(&[plan(
            &local.join("f"),
            dest.to_str().unwrap(),
            None,
            Some("no-such-user-bake"),
        )])
        .await;
    assert!(matches!(err, Err(CommError::Upload { .. })), "{err:?}");
}

#[tokio::test]
async fn reconnect_after_the_connection_drops() {
    let sshd = Sshd::started();
    let (mut comm, _sink) = connected(&sshd).await;
    let mut s = step("reboot");
    s.reboot = true;
    // Killing our own per-connection sshd process is what a reboot looks like from here.
    let out = comm.run(&s, "kill -9 $PPID; sleep 5").await.unwrap();
    assert!(out.disconnected, "{out:?}");
    assert_eq!(out.exit_status, None);
    comm.reconnect().await.unwrap();
    assert_eq!(
        comm.run(&step("t"), "true").await.unwrap().exit_status,
        Some(0)
    );
}

/// Uploads `plan` (one large file) over the SFTP transport, whatever `LARGE_FILES` says.
async fn sftp_upload(comm: &SshCommunicator, plan: &UploadPlan) -> Result<(), CommError> {
    let items = crate::remote::transfer::items::items(std::slice::from_ref(plan));
    let item = items
        .into_iter()
        .find(|i| i.kind == EntryKind::File)
        .unwrap();
    let hasher = if comm.remote.openssl {
        "openssl dgst -sha256 -r"
    } else {
        "sha256sum"
    };
    let sent = std::sync::atomic::AtomicU64::new(0);
    let on_sent = |n: u64| {
        sent.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
    };
    super::super::sftp::upload(&comm.handle, &comm.remote, hasher, item, &on_sent).await?;
    assert_eq!(
        sent.into_inner(),
        plan.entries[0].size,
        "progress must count every byte"
    );
    Ok(())
}

/// Both ways SFTP is reached: the `sftp` subsystem when logged in as root, and a root
/// `sftp-server` under `sudo -n` otherwise (with `sha256sum` instead of openssl).
#[tokio::test]
async fn sftp_upload_content_mode_owner_and_no_temp_left() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("app.bin");
    let bytes: Vec<u8> = (0..(20 * 1024 * 1024 + 12345u32))
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();
    std::fs::write(&big, &bytes).unwrap();
    let (mut comm, _sink) = connected(&sshd).await;
    for (login, sudo, openssl) in [("root", "", true), ("sudo", "sudo -n ", false)] {
        comm.remote.sudo = sudo;
        comm.remote.openssl = openssl;
        let dir = remote.join(format!("{login}/opt/app/bin"));
        let dest = dir.join("app.bin");
        // An existing destination is replaced.
        if login == "sudo" {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&dest, b"old").unwrap();
        }
        let p = plan(
            &big,
            dest.to_str().unwrap(),
            Some(0o750),
            Some("nobody:nogroup"),
        );
        sftp_upload(&comm, &p).await.unwrap();
        assert!(std::fs::read(&dest).unwrap() == bytes, "{login}: content");
        let m = std::fs::metadata(&dest).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid(), m.gid()),
            (0o750, 65534, 65534),
            "{login}"
        );
        // The parent was created root-owned with 0755; the temp file is gone.
        let d = std::fs::metadata(&dir).unwrap();
        assert_eq!((d.mode() & 0o777, d.uid()), (0o755, 0), "{login}");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("app.bin")], "{login}");
    }
}

#[tokio::test]
async fn sftp_checksum_mismatch_is_detected_and_leaves_nothing() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![7u8; 17 * 1024 * 1024]).unwrap();
    let (mut comm, _sink) = connected(&sshd).await;
    for sudo in ["", "sudo -n "] {
        comm.remote.sudo = sudo;
        let dest = remote.join("big.bin");
        let mut p = plan(&big, dest.to_str().unwrap(), None, None);
        p.entries[0].sha256 = Some([0u8; 32]);
        match sftp_upload(&comm, &p).await {
            Err(CommError::Checksum {
                path,
                local,
                remote,
            }) => {
                assert_eq!(path, dest.to_str().unwrap());
                assert_eq!(local, "0".repeat(64));
                assert_eq!(remote, hex::encode(sha(&vec![7u8; 17 * 1024 * 1024])));
            }
            other => panic!("expected a checksum error ({sudo:?}), got {other:?}"),
        }
        // Neither the destination nor the temp file exists.
        assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0, "{sudo:?}");
    }
}

/// A local file that shrank after planning fails the upload and leaves no temp file.
#[tokio::test]
async fn sftp_short_source_fails_cleanly() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![1u8; 17 * 1024 * 1024]).unwrap();
    let dest = remote.join("big.bin");
    let p = plan(&big, dest.to_str().unwrap(), None, None);
    std::fs::write(&big, vec![1u8; 1024 * 1024]).unwrap();
    let (comm, _sink) = connected(&sshd).await;
    let err = sftp_upload(&comm, &p).await.unwrap_err();
    assert!(
        matches!(&err, CommError::Upload { reason, .. } if reason.contains("shorter than planned")),
        "{err}"
    );
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 0);
}

/// A parent directory that cannot be created is reported as such, before any SFTP starts.
#[tokio::test]
async fn sftp_uncreatable_parent_is_an_upload_error() {
    let sshd = Sshd::started();
    let local = sshd.scratch("local");
    let remote = sshd.scratch("remote");
    let big = local.join("big.bin");
    std::fs::write(&big, vec![3u8; 17 * 1024 * 1024]).unwrap();
    std::fs::write(remote.join("file"), b"not a directory").unwrap();
    let dest = remote.join("file/sub/big.bin");
    let (mut comm, _sink) = connected(&sshd).await;
    for sudo in ["", "sudo -n "] {
        comm.remote.sudo = sudo;
        let err = sftp_upload(&comm, &plan(&big, dest.to_str().unwrap(), None, None))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, CommError::Upload { reason, .. } if reason.contains("creating the directory")),
            "{sudo:?}: {err}"
        );
    }
    assert_eq!(std::fs::read_dir(&remote).unwrap().count(), 1);
}

/// The pipeline runs steps and uploads from spawned tasks: the futures must be `Send`.
#[allow(dead_code)]
fn futures_are_send(c: &SshCommunicator, s: &Step, p: &[UploadPlan]) {
    fn send<T: Send>(_: T) {}
    send(c.run(s, ""));
    send(c.upload(p));
    send(SshCommunicator::connect(c.target.clone(), c.sink.clone()));
}
