//! Unit tests of the image builder's pure parts: input hashing and the
//! in-memory build context. The Docker side is in `controller/tests/images.rs`.

use std::path::Path;

use super::*;

/// A fake runtime-image tree and binaries in a temp dir.
fn fixture(dir: &Path) -> ImageInputs {
    let runtime = dir.join("runtime-image");
    for sub in ["minimal", "probe", "standard"] {
        std::fs::create_dir_all(runtime.join(sub)).expect("mkdir");
    }
    let write = |path: &Path, text: &str| std::fs::write(path, text).expect("write fixture");
    write(&runtime.join("minimal/Dockerfile"), "FROM scratch\n");
    write(&runtime.join("minimal/passwd"), "root:x:0:0::/:/bin/sh\n");
    write(&runtime.join("minimal/group"), "root:x:0:\n");
    write(
        &runtime.join("probe/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\n",
    );
    write(
        &runtime.join("standard/Dockerfile"),
        "ARG BASE\nFROM ${BASE}\n",
    );
    write(&runtime.join("standard/build-rootfs.sh"), "#!/bin/sh\n");
    write(&runtime.join("standard/packages.txt"), "bash\n");
    write(&dir.join("agent"), "agent-v1");
    write(&dir.join("probe"), "probe-v1");
    write(&dir.join("busybox"), "busybox-v1");
    let mut inputs = ImageInputs::new(dir.join("agent"), runtime).with_probe(dir.join("probe"));
    inputs.busybox = dir.join("busybox");
    inputs.rootfs_cache_dir = dir.join("cache");
    inputs
}

fn all_hashes(inputs: &ImageInputs) -> Vec<String> {
    ImageKind::ALL
        .iter()
        .map(|kind| inputs_hash(*kind, inputs).expect("hash"))
        .collect()
}

#[test]
fn hashes_are_stable_distinct_and_hex() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inputs = fixture(dir.path());
    let first = all_hashes(&inputs);
    assert_eq!(first, all_hashes(&inputs));
    assert_eq!(first.len(), 3);
    assert!(first[0] != first[1] && first[1] != first[2] && first[0] != first[2]);
    for hash in &first {
        assert_eq!(hash.len(), 64);
        assert!(hash.chars().all(|c| c.is_ascii_hexdigit()));
    }
}

/// Which images a change to each input must rebuild: (file, [minimal, standard, probe]).
#[test]
fn each_input_changes_exactly_the_images_built_from_it() {
    let cases: &[(&str, [bool; 3])] = &[
        ("agent", [true, true, true]),
        ("busybox", [true, false, true]),
        ("probe", [false, false, true]),
        ("runtime-image/minimal/Dockerfile", [true, false, true]),
        ("runtime-image/minimal/passwd", [true, false, true]),
        ("runtime-image/minimal/group", [true, false, true]),
        ("runtime-image/probe/Dockerfile", [false, false, true]),
        ("runtime-image/standard/Dockerfile", [false, true, false]),
        (
            "runtime-image/standard/build-rootfs.sh",
            [false, true, false],
        ),
        ("runtime-image/standard/packages.txt", [false, true, false]),
    ];
    for (file, expected) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let inputs = fixture(dir.path());
        let before = all_hashes(&inputs);
        let path = dir.path().join(file);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes.push(b'\n');
        std::fs::write(&path, bytes).expect("write");
        let after = all_hashes(&inputs);
        let changed: Vec<bool> = before.iter().zip(&after).map(|(a, b)| a != b).collect();
        assert_eq!(&changed[..], &expected[..], "changing {file}");
    }
}

#[test]
fn missing_inputs_name_the_image_and_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut inputs = fixture(dir.path());
    inputs.agent_binary = dir.path().join("no-such-agent");
    let error = inputs_hash(ImageKind::Minimal, &inputs).expect_err("missing agent");
    assert_eq!(
        error.to_string(),
        format!(
            "read image input {}/no-such-agent for kiln-minimal",
            dir.path().display()
        )
    );
    inputs = fixture(dir.path());
    inputs.probe_binary = None;
    let error = inputs_hash(ImageKind::Probe, &inputs).expect_err("no probe");
    assert_eq!(
        error.to_string(),
        "build kiln-probe: no probe binary given (ImageInputs::probe_binary)"
    );
}

#[test]
fn context_tar_holds_the_files_with_their_modes() {
    let files = vec![
        ContextFile {
            name: "Dockerfile".into(),
            mode: 0o644,
            bytes: b"FROM scratch\n".to_vec(),
        },
        ContextFile {
            name: "kiln-agent".into(),
            mode: 0o755,
            bytes: vec![0x7f, b'E', b'L', b'F'],
        },
    ];
    let bytes = context_tar(&files).expect("tar");
    assert_eq!(
        bytes,
        context_tar(&files).expect("tar again"),
        "deterministic"
    );
    let mut archive = tar::Archive::new(bytes.as_slice());
    let mut seen = Vec::new();
    for entry in archive.entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let mut content = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut content).expect("read entry");
        let path = entry.path().expect("path").display().to_string();
        let header = entry.header();
        seen.push((
            path,
            header.mode().expect("mode"),
            header.uid().expect("uid"),
            content,
        ));
    }
    assert_eq!(
        seen,
        vec![
            (
                "Dockerfile".to_owned(),
                0o644,
                0,
                b"FROM scratch\n".to_vec()
            ),
            (
                "kiln-agent".to_owned(),
                0o755,
                0,
                vec![0x7f, b'E', b'L', b'F']
            ),
        ]
    );
}

#[test]
fn kinds_names_and_labels() {
    let table = [
        (ImageKind::Minimal, "kiln-minimal", "minimal"),
        (ImageKind::Standard, "kiln-standard", "standard"),
        (ImageKind::Probe, "kiln-probe", "probe"),
    ];
    for (kind, repository, label) in table {
        assert_eq!(kind.repository(), repository);
        assert_eq!(kind.to_string(), repository);
        assert_eq!(kind.label(), label);
        assert_eq!(ImageKind::from_label(label), Some(kind));
    }
    assert_eq!(ImageKind::from_label("latest"), None);
    assert_eq!(short_hash("0123456789abcdef"), "0123456789ab");
    assert_eq!(short_hash("abc"), "abc");
}

#[test]
fn compiled_in_seccomp_profile_is_the_checked_in_file() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../runtime-image/seccomp/kiln.json");
    let on_disk = std::fs::read_to_string(path).expect("read kiln.json");
    assert_eq!(SECCOMP_PROFILE_JSON, on_disk);
    let profile: serde_json::Value =
        serde_json::from_str(SECCOMP_PROFILE_JSON).expect("valid JSON");
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
}

/// The controller spawns image builds on tokio: the futures must be Send.
#[test]
fn ensure_image_futures_are_send() {
    fn assert_send<T: Send>(_: &T) {}
    let docker =
        bollard::Docker::connect_with_local_defaults().expect("client (no connection yet)");
    let inputs = ImageInputs::new("/nonexistent/agent", "/nonexistent/runtime-image");
    let future = ensure_image(&docker, ImageKind::Standard, &inputs);
    assert_send(&future);
    let mut progress = |_: &str| {};
    let future = ensure_image_with_progress(&docker, ImageKind::Probe, &inputs, &mut progress);
    assert_send(&future);
}
