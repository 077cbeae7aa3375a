//! Stage: operator setup → **sandbox::image** → launcher. Builds Kiln's runtime
//! images locally (there is no registry anywhere) and reuses them while their
//! inputs are unchanged.
//!
//! Three images, each described by files under `runtime-image/`:
//! - `kiln-minimal`: `FROM scratch` + Debian's static busybox + the agent;
//! - `kiln-standard`: a debootstrap Debian 12 minbase (built on the host by
//!   `standard/build-rootfs.sh`, imported as `kiln-standard-base:<hash12>`) +
//!   the agent;
//! - `kiln-probe` (tests only): `kiln-minimal` + the static security probe.
//!
//! Every input (Dockerfile, agent, busybox, probe, rootfs script, package list)
//! is hashed into `kiln.inputs_hash`, a label on the built image. An image with
//! that label is reused as is; otherwise it is built with the legacy builder
//! (Docker 20.10, API 1.41, has no buildx) from an in-memory tar context and
//! tagged `<repository>:<hash12>` and `<repository>:latest`. The debootstrap
//! tarball is cached on disk as `<rootfs_cache_dir>/rootfs-<hash>.tar`, so CI and
//! reruns never debootstrap twice.
//!
//! Progress ("what it is doing") goes to a caller-supplied callback, or to
//! tracing with [`ensure_image`].
//!
//! Old hash-tagged images are removed by [`prune::prune_images`] (`kiln image
//! build` does it after building; `kiln image prune` on demand), never by
//! [`ensure_image`], which tests and the launcher call concurrently.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use bollard::Docker;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, CreateImageOptionsBuilder, ListImagesOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};

pub mod prune;

/// The label that carries the content hash of an image's inputs.
pub const INPUTS_HASH_LABEL: &str = "kiln.inputs_hash";
/// The label that says which Kiln image an image is (`minimal`, `standard`, `probe`).
pub const IMAGE_KIND_LABEL: &str = "kiln.image";

/// Kiln's seccomp profile (`runtime-image/seccomp/kiln.json`), compiled into
/// the binary so that the security posture is fixed at build time and cannot
/// drift with a file on the host. Pass it as `SecurityOpt: "seccomp=<this>"`.
/// Every rule is explained in `runtime-image/seccomp/README.md`.
pub const SECCOMP_PROFILE_JSON: &str = include_str!("../../../runtime-image/seccomp/kiln.json");

/// Bumped when the way images are assembled changes without any input file
/// changing (e.g. the tar layout below), so that old images are not reused.
const BUILDER_VERSION: &str = "kiln-image-builder/1";

/// Where the agent and the probe live inside every image (contract C).
const AGENT_PATH_IN_CONTEXT: &str = "kiln-agent";
const PROBE_PATH_IN_CONTEXT: &str = "kiln-probe";

/// Which runtime image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ImageKind {
    /// scratch + static busybox + agent, under 5 MB.
    Minimal,
    /// Debian 12 minbase + bash, coreutils, python3, python3-yaml, jq, git,
    /// ca-certificates + agent.
    Standard,
    /// kiln-minimal + `/kiln/kiln-probe`; used by the security tests only.
    Probe,
}

impl ImageKind {
    /// Every kind, in build order (the probe image is built on kiln-minimal).
    pub const ALL: [ImageKind; 3] = [ImageKind::Minimal, ImageKind::Standard, ImageKind::Probe];

    /// The image repository name, e.g. `kiln-minimal`.
    pub fn repository(self) -> &'static str {
        match self {
            ImageKind::Minimal => "kiln-minimal",
            ImageKind::Standard => "kiln-standard",
            ImageKind::Probe => "kiln-probe",
        }
    }

    /// The value of the `kiln.image` label.
    pub fn label(self) -> &'static str {
        match self {
            ImageKind::Minimal => "minimal",
            ImageKind::Standard => "standard",
            ImageKind::Probe => "probe",
        }
    }

    /// Parses `minimal`, `standard` or `probe`.
    pub fn from_label(label: &str) -> Option<ImageKind> {
        ImageKind::ALL
            .into_iter()
            .find(|kind| kind.label() == label)
    }
}

impl fmt::Display for ImageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.repository())
    }
}

/// The files an image is made from. Only the operator's configuration (or
/// xtask) sets these; no recipe field reaches them.
#[derive(Clone, Debug)]
pub struct ImageInputs {
    /// The static `kiln-agent` binary (all kinds).
    pub agent_binary: PathBuf,
    /// The static `kiln-probe` binary (required for [`ImageKind::Probe`]).
    pub probe_binary: Option<PathBuf>,
    /// The `runtime-image/` directory of the Kiln checkout.
    pub runtime_image_dir: PathBuf,
    /// Debian's static busybox (package busybox-static).
    pub busybox: PathBuf,
    /// Where the debootstrap tarball of kiln-standard is cached.
    pub rootfs_cache_dir: PathBuf,
}

impl ImageInputs {
    /// Inputs with the host defaults: `/bin/busybox` and `/var/cache/kiln`.
    pub fn new(
        agent_binary: impl Into<PathBuf>,
        runtime_image_dir: impl Into<PathBuf>,
    ) -> ImageInputs {
        ImageInputs {
            agent_binary: agent_binary.into(),
            probe_binary: None,
            runtime_image_dir: runtime_image_dir.into(),
            busybox: PathBuf::from("/bin/busybox"),
            rootfs_cache_dir: PathBuf::from("/var/cache/kiln"),
        }
    }

    /// The same inputs with a probe binary.
    pub fn with_probe(mut self, probe_binary: impl Into<PathBuf>) -> ImageInputs {
        self.probe_binary = Some(probe_binary.into());
        self
    }
}

/// A built (or reused) image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    pub kind: ImageKind,
    /// The image id, `sha256:...`.
    pub id: String,
    /// The content-addressed tag, `kiln-minimal:<hash12>`: use this one to
    /// create containers, it cannot move.
    pub tag: String,
    /// Hex SHA-256 of every input (the `kiln.inputs_hash` label).
    pub inputs_hash: String,
    /// True when an image with this hash already existed and nothing was built.
    pub reused: bool,
}

/// A failed image operation. Each variant names the operation and the image.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("read image input {path} for {image}")]
    ReadInput {
        image: ImageKind,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("build {image}: no probe binary given (ImageInputs::probe_binary)")]
    MissingProbeBinary { image: ImageKind },
    #[error("list images labelled {INPUTS_HASH_LABEL}={inputs_hash} for {image}")]
    ListImages {
        image: ImageKind,
        inputs_hash: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("assemble the build context of {image}")]
    BuildContext {
        image: ImageKind,
        #[source]
        source: std::io::Error,
    },
    #[error("build image {image}")]
    BuildImage {
        image: ImageKind,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("build image {image}: {message}")]
    BuildFailed { image: ImageKind, message: String },
    #[error("build image {image}: the build finished without an image id")]
    BuildNoImageId { image: ImageKind },
    #[error("run {script} for {image}")]
    RunRootfsScript {
        image: ImageKind,
        script: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{script} for {image} exited with {status}")]
    RootfsScriptFailed {
        image: ImageKind,
        script: PathBuf,
        status: std::process::ExitStatus,
    },
    #[error("import rootfs {tarball} as {tag}")]
    ImportRootfs {
        tag: String,
        tarball: PathBuf,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("import rootfs {tarball} as {tag}: {message}")]
    ImportRootfsFailed {
        tag: String,
        tarball: PathBuf,
        message: String,
    },
    #[error("inspect image {tag}")]
    InspectImage {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("tag image {id} as {tag}")]
    TagImage {
        id: String,
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// Makes sure the image of `kind` exists for exactly these inputs, building it
/// when needed; progress lines go to tracing (target `kiln::image`).
pub async fn ensure_image(
    docker: &Docker,
    kind: ImageKind,
    inputs: &ImageInputs,
) -> Result<ImageRef, ImageError> {
    let mut log = |line: &str| tracing::info!(target: "kiln::image", image = %kind, "{line}");
    ensure_image_with_progress(docker, kind, inputs, &mut log).await
}

/// [`ensure_image`] with progress lines ("what it is doing", build output)
/// given to `progress`, for `kiln image build` and xtask.
pub async fn ensure_image_with_progress(
    docker: &Docker,
    kind: ImageKind,
    inputs: &ImageInputs,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageRef, ImageError> {
    match kind {
        ImageKind::Minimal => ensure_minimal(docker, inputs, progress).await,
        ImageKind::Probe => {
            let minimal = ensure_minimal(docker, inputs, progress).await?;
            ensure_probe(docker, inputs, &minimal, progress).await
        }
        ImageKind::Standard => ensure_standard(docker, inputs, progress).await,
    }
}

/// The content hash of every input of `kind` (what `kiln.inputs_hash` holds),
/// computed without Docker. Reads the input files.
pub fn inputs_hash(kind: ImageKind, inputs: &ImageInputs) -> Result<String, ImageError> {
    match kind {
        ImageKind::Minimal => Ok(hash_files(&minimal_files(inputs)?)),
        ImageKind::Probe => {
            let minimal_hash = hash_files(&minimal_files(inputs)?);
            Ok(probe_hash(&minimal_hash, &probe_files(inputs)?))
        }
        ImageKind::Standard => {
            let rootfs_hash = hash_files(&rootfs_files(inputs)?);
            Ok(standard_hash(&rootfs_hash, &standard_files(inputs)?))
        }
    }
}

/// The first 12 hex digits of a hash, as used in tags.
pub fn short_hash(inputs_hash: &str) -> &str {
    inputs_hash.get(..12).unwrap_or(inputs_hash)
}

// ---------------------------------------------------------------------------
// Inputs: each image's files, read into memory (a few MB at most).

/// One file of a build context: its name in the context, its mode and bytes.
struct ContextFile {
    name: String,
    mode: u32,
    bytes: Vec<u8>,
}

fn read_input(
    kind: ImageKind,
    path: &Path,
    name: &str,
    mode: u32,
) -> Result<ContextFile, ImageError> {
    let bytes = std::fs::read(path).map_err(|source| ImageError::ReadInput {
        image: kind,
        path: path.to_path_buf(),
        source,
    })?;
    Ok(ContextFile {
        name: name.to_owned(),
        mode,
        bytes,
    })
}

fn minimal_files(inputs: &ImageInputs) -> Result<Vec<ContextFile>, ImageError> {
    let kind = ImageKind::Minimal;
    let dir = inputs.runtime_image_dir.join("minimal");
    Ok(vec![
        read_input(kind, &dir.join("Dockerfile"), "Dockerfile", 0o644)?,
        read_input(kind, &dir.join("passwd"), "passwd", 0o644)?,
        read_input(kind, &dir.join("group"), "group", 0o644)?,
        read_input(kind, &inputs.busybox, "busybox", 0o755)?,
        read_input(kind, &inputs.agent_binary, AGENT_PATH_IN_CONTEXT, 0o755)?,
    ])
}

fn probe_files(inputs: &ImageInputs) -> Result<Vec<ContextFile>, ImageError> {
    let kind = ImageKind::Probe;
    let probe = inputs
        .probe_binary
        .as_deref()
        .ok_or(ImageError::MissingProbeBinary { image: kind })?;
    let dir = inputs.runtime_image_dir.join("probe");
    Ok(vec![
        read_input(kind, &dir.join("Dockerfile"), "Dockerfile", 0o644)?,
        read_input(kind, probe, PROBE_PATH_IN_CONTEXT, 0o755)?,
    ])
}

/// The inputs of the debootstrap tarball (not of the final image).
fn rootfs_files(inputs: &ImageInputs) -> Result<Vec<ContextFile>, ImageError> {
    let kind = ImageKind::Standard;
    let dir = inputs.runtime_image_dir.join("standard");
    Ok(vec![
        read_input(kind, &dir.join("build-rootfs.sh"), "build-rootfs.sh", 0o755)?,
        read_input(kind, &dir.join("packages.txt"), "packages.txt", 0o644)?,
    ])
}

fn standard_files(inputs: &ImageInputs) -> Result<Vec<ContextFile>, ImageError> {
    let kind = ImageKind::Standard;
    let dir = inputs.runtime_image_dir.join("standard");
    Ok(vec![
        read_input(kind, &dir.join("Dockerfile"), "Dockerfile", 0o644)?,
        read_input(kind, &inputs.agent_binary, AGENT_PATH_IN_CONTEXT, 0o755)?,
    ])
}

/// SHA-256 over (builder version, then name, mode, length and bytes of each
/// file): length-prefixed, so no two different input sets hash alike.
fn hash_files(files: &[ContextFile]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(BUILDER_VERSION.as_bytes());
    for file in files {
        hasher.update((file.name.len() as u64).to_le_bytes());
        hasher.update(file.name.as_bytes());
        hasher.update(file.mode.to_le_bytes());
        hasher.update((file.bytes.len() as u64).to_le_bytes());
        hasher.update(&file.bytes);
    }
    hex::encode(hasher.finalize())
}

fn probe_hash(minimal_hash: &str, files: &[ContextFile]) -> String {
    chained_hash("probe-on-minimal", minimal_hash, files)
}

fn standard_hash(rootfs_hash: &str, files: &[ContextFile]) -> String {
    chained_hash("standard-on-rootfs", rootfs_hash, files)
}

/// The hash of an image built on a base identified by `base_hash`.
fn chained_hash(relation: &str, base_hash: &str, files: &[ContextFile]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(relation.as_bytes());
    hasher.update(base_hash.as_bytes());
    hasher.update(hash_files(files).as_bytes());
    hex::encode(hasher.finalize())
}

// ---------------------------------------------------------------------------
// The three images.

async fn ensure_minimal(
    docker: &Docker,
    inputs: &ImageInputs,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageRef, ImageError> {
    let kind = ImageKind::Minimal;
    let files = minimal_files(inputs)?;
    let inputs_hash = hash_files(&files);
    build_if_missing(docker, kind, inputs_hash, files, HashMap::new(), progress).await
}

async fn ensure_probe(
    docker: &Docker,
    inputs: &ImageInputs,
    minimal: &ImageRef,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageRef, ImageError> {
    let kind = ImageKind::Probe;
    let files = probe_files(inputs)?;
    let inputs_hash = probe_hash(&minimal.inputs_hash, &files);
    let build_args = HashMap::from([("BASE".to_owned(), minimal.tag.clone())]);
    build_if_missing(docker, kind, inputs_hash, files, build_args, progress).await
}

async fn ensure_standard(
    docker: &Docker,
    inputs: &ImageInputs,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageRef, ImageError> {
    let kind = ImageKind::Standard;
    let rootfs_hash = hash_files(&rootfs_files(inputs)?);
    let files = standard_files(inputs)?;
    let inputs_hash = standard_hash(&rootfs_hash, &files);
    if let Some(found) = find_by_hash(docker, kind, &inputs_hash).await? {
        progress(&format!("{kind}: reusing {} ({})", found.tag, found.id));
        return Ok(found);
    }
    let base_tag = ensure_standard_base(docker, inputs, &rootfs_hash, progress).await?;
    let build_args = HashMap::from([("BASE".to_owned(), base_tag)]);
    build_if_missing(docker, kind, inputs_hash, files, build_args, progress).await
}

/// Imports the debootstrap rootfs as `kiln-standard-base:<hash12>`, running
/// `build-rootfs.sh` first unless its tarball is cached on disk.
async fn ensure_standard_base(
    docker: &Docker,
    inputs: &ImageInputs,
    rootfs_hash: &str,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<String, ImageError> {
    let kind = ImageKind::Standard;
    let tag = format!("kiln-standard-base:{}", short_hash(rootfs_hash));
    if docker.inspect_image(&tag).await.is_ok() {
        progress(&format!("{kind}: reusing base {tag}"));
        return Ok(tag);
    }
    let tarball = inputs
        .rootfs_cache_dir
        .join(format!("rootfs-{rootfs_hash}.tar"));
    if tarball.is_file() {
        progress(&format!(
            "{kind}: using cached rootfs {}",
            tarball.display()
        ));
    } else {
        let script = inputs.runtime_image_dir.join("standard/build-rootfs.sh");
        progress(&format!(
            "{kind}: no cached rootfs, running {} (debootstrap, a few minutes)",
            script.display()
        ));
        run_rootfs_script(&script, &tarball, progress).await?;
    }
    progress(&format!("{kind}: importing {} as {tag}", tarball.display()));
    import_rootfs(docker, &tarball, &tag, rootfs_hash).await?;
    Ok(tag)
}

/// Runs `build-rootfs.sh OUT` and forwards its stderr lines as progress.
async fn run_rootfs_script(
    script: &Path,
    tarball: &Path,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<(), ImageError> {
    let kind = ImageKind::Standard;
    let run_error = |source| ImageError::RunRootfsScript {
        image: kind,
        script: script.to_path_buf(),
        source,
    };
    let mut child = tokio::process::Command::new("bash")
        .arg(script)
        .arg(tarball)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(run_error)?;
    if let Some(stderr) = child.stderr.take() {
        let mut lines = BufReader::new(stderr).lines();
        while let Some(line) = lines.next_line().await.map_err(run_error)? {
            progress(&format!("{kind}: {line}"));
        }
    }
    let status = child.wait().await.map_err(run_error)?;
    if !status.success() {
        return Err(ImageError::RootfsScriptFailed {
            image: kind,
            script: script.to_path_buf(),
            status,
        });
    }
    Ok(())
}

/// `docker import` of the tarball, streamed from disk (it is ~200 MB).
async fn import_rootfs(
    docker: &Docker,
    tarball: &Path,
    tag: &str,
    rootfs_hash: &str,
) -> Result<(), ImageError> {
    let (repo, version) = tag.split_once(':').unwrap_or((tag, "latest"));
    let import_failed = |message: String| ImageError::ImportRootfsFailed {
        tag: tag.to_owned(),
        tarball: tarball.to_path_buf(),
        message,
    };
    let file = tokio::fs::File::open(tarball)
        .await
        .map_err(|error| import_failed(format!("open: {error}")))?;
    let chunks = futures::stream::unfold(file, |mut file| async move {
        let mut buffer = vec![0u8; 1 << 20];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(buffer.into()), file))
            }
            Err(error) => Some((Err(error), file)),
        }
    });
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(version)
        .changes(vec![format!("LABEL {INPUTS_HASH_LABEL}={rootfs_hash}")])
        .build();
    let mut stream =
        docker.create_image(Some(options), Some(bollard::body_try_stream(chunks)), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|source| match source {
            bollard::errors::Error::DockerStreamError { error } => import_failed(error),
            source => ImageError::ImportRootfs {
                tag: tag.to_owned(),
                tarball: tarball.to_path_buf(),
                source,
            },
        })?;
        if let Some(detail) = info.error_detail {
            return Err(import_failed(detail.message.unwrap_or_default()));
        }
    }
    docker
        .inspect_image(tag)
        .await
        .map_err(|source| ImageError::InspectImage {
            tag: tag.to_owned(),
            source,
        })?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Build, look up, tag.

/// Reuses the image labelled with `inputs_hash`, or builds `files` as a
/// context with the legacy builder and tags the result.
async fn build_if_missing(
    docker: &Docker,
    kind: ImageKind,
    inputs_hash: String,
    files: Vec<ContextFile>,
    build_args: HashMap<String, String>,
    progress: &mut (dyn FnMut(&str) + Send),
) -> Result<ImageRef, ImageError> {
    if let Some(found) = find_by_hash(docker, kind, &inputs_hash).await? {
        progress(&format!("{kind}: reusing {} ({})", found.tag, found.id));
        return Ok(found);
    }
    let tag = format!("{}:{}", kind.repository(), short_hash(&inputs_hash));
    progress(&format!("{kind}: building {tag}"));
    let context = context_tar(&files).map_err(|source| ImageError::BuildContext {
        image: kind,
        source,
    })?;
    let labels = HashMap::from([
        (INPUTS_HASH_LABEL.to_owned(), inputs_hash.clone()),
        (IMAGE_KIND_LABEL.to_owned(), kind.label().to_owned()),
    ]);
    let options = BuildImageOptionsBuilder::new()
        .dockerfile("Dockerfile")
        .t(&tag)
        .rm(true)
        .forcerm(true)
        .labels(&labels)
        .buildargs(&build_args)
        .build();
    let mut stream = docker.build_image(options, None, Some(bollard::body_full(context.into())));
    let mut built_id = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|source| match source {
            // The builder's own failure (a RUN step exiting non-zero, a
            // missing file): its message is the useful part.
            bollard::errors::Error::DockerStreamError { error } => ImageError::BuildFailed {
                image: kind,
                message: error,
            },
            source => ImageError::BuildImage {
                image: kind,
                source,
            },
        })?;
        if let Some(detail) = info.error_detail {
            return Err(ImageError::BuildFailed {
                image: kind,
                message: detail.message.unwrap_or_default(),
            });
        }
        if let Some(text) = info.stream.as_deref() {
            for line in text.lines().filter(|line| !line.trim().is_empty()) {
                progress(&format!("{kind}: {line}"));
            }
        }
        if let Some(aux) = info.aux {
            built_id = aux.id;
        }
    }
    let id = match built_id {
        Some(id) => id,
        None => docker
            .inspect_image(&tag)
            .await
            .map_err(|source| ImageError::InspectImage {
                tag: tag.clone(),
                source,
            })?
            .id
            .ok_or(ImageError::BuildNoImageId { image: kind })?,
    };
    tag_latest(docker, kind, &id).await?;
    progress(&format!("{kind}: built {tag} ({id})"));
    Ok(ImageRef {
        kind,
        id,
        tag,
        inputs_hash,
        reused: false,
    })
}

/// The image labelled `kiln.inputs_hash=<hash>` and `kiln.image=<kind>`, if
/// any. Its content tag and `latest` are (re)applied, since an operator may
/// have removed a tag while keeping the image.
async fn find_by_hash(
    docker: &Docker,
    kind: ImageKind,
    inputs_hash: &str,
) -> Result<Option<ImageRef>, ImageError> {
    let filters = HashMap::from([(
        "label".to_owned(),
        vec![
            format!("{INPUTS_HASH_LABEL}={inputs_hash}"),
            format!("{IMAGE_KIND_LABEL}={}", kind.label()),
        ],
    )]);
    let options = ListImagesOptionsBuilder::new().filters(&filters).build();
    let images =
        docker
            .list_images(Some(options))
            .await
            .map_err(|source| ImageError::ListImages {
                image: kind,
                inputs_hash: inputs_hash.to_owned(),
                source,
            })?;
    let Some(image) = images.into_iter().next() else {
        return Ok(None);
    };
    let tag = format!("{}:{}", kind.repository(), short_hash(inputs_hash));
    if !image.repo_tags.iter().any(|existing| existing == &tag) {
        tag_image(
            docker,
            &image.id,
            kind.repository(),
            short_hash(inputs_hash),
        )
        .await?;
    }
    tag_latest(docker, kind, &image.id).await?;
    Ok(Some(ImageRef {
        kind,
        id: image.id,
        tag,
        inputs_hash: inputs_hash.to_owned(),
        reused: true,
    }))
}

async fn tag_latest(docker: &Docker, kind: ImageKind, id: &str) -> Result<(), ImageError> {
    tag_image(docker, id, kind.repository(), "latest").await
}

async fn tag_image(docker: &Docker, id: &str, repo: &str, tag: &str) -> Result<(), ImageError> {
    let options = TagImageOptionsBuilder::new().repo(repo).tag(tag).build();
    docker
        .tag_image(id, Some(options))
        .await
        .map_err(|source| ImageError::TagImage {
            id: id.to_owned(),
            tag: format!("{repo}:{tag}"),
            source,
        })
}

/// A tar of the build context, in memory. Fixed mtime and owner so that the
/// same inputs give the same context.
fn context_tar(files: &[ContextFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for file in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(file.bytes.len() as u64);
        header.set_mode(file.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, &file.name, file.bytes.as_slice())?;
    }
    builder.into_inner()
}

#[cfg(test)]
#[path = "image_tests.rs"]
mod tests;
