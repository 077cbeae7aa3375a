//! Stage: operator setup (`kiln image build`, `kiln image prune`) →
//! **sandbox::image::prune**. Every `kiln image build` with changed inputs
//! tags a new `<repository>:<hash12>` image and moves `latest` to it; the old
//! hash-tagged images stayed forever (a kiln-standard is ~200 MB, and its
//! imported debootstrap base another ~200 MB). This removes them.
//!
//! What is removed, per family (`kiln-minimal`, `kiln-standard` with its
//! `kiln-standard-base` images, `kiln-probe`): every image Kiln built (label
//! `kiln.inputs_hash`) whose tags are all in the family's repositories (an
//! operator's own image built `FROM kiln-minimal` inherits Kiln's labels but
//! is tagged elsewhere, so it is never a candidate; untagged images neither),
//! except
//! - the one `<repository>:latest` points to (the current one),
//! - any image another family's current image is built on (its history: the
//!   current kiln-probe is built on some kiln-minimal, the current
//!   kiln-standard on some kiln-standard-base),
//! - any image a container uses, running or stopped (a stopped Kiln container
//!   is an execution the controller has not inspected and removed yet),
//! - any image labelled `kiln.test` (tests build and remove their own; a test
//!   prunes only its own, under its own repository prefix: [`PruneScope`]).
//!
//! A family without a `latest` tag is left alone: nothing says which image is
//! current. Images are removed by id without `force`, so Docker itself refuses
//! (409) an image that a container started using since the listing, or that
//! other images are built on; that image is kept and the reason reported.
//!
//! [`plan`] is the pure decision; [`prune_images`] gathers the facts from
//! Docker, applies the plan, and reports each image.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListImagesOptionsBuilder, RemoveImageOptionsBuilder,
};

use super::{INPUTS_HASH_LABEL, ImageKind};

/// The label the test suites put on every image and container they create.
pub const TEST_LABEL: &str = "kiln.test";

/// Which images a prune may look at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneScope {
    /// Family repositories are `<prefix><kind>` and `<prefix>standard-base`.
    pub repository_prefix: String,
    /// `None`: only images without a `kiln.test` label. `Some(value)`: only
    /// images labelled `kiln.test=<value>` (a test pruning its own images).
    pub test_label: Option<String>,
}

impl PruneScope {
    /// Kiln's own images: `kiln-minimal`, `kiln-standard`,
    /// `kiln-standard-base`, `kiln-probe`; never a test's.
    pub fn operator() -> PruneScope {
        PruneScope {
            repository_prefix: "kiln-".to_owned(),
            test_label: None,
        }
    }

    /// The repository of a family's images (`kiln-minimal`).
    pub fn repository(&self, kind: ImageKind) -> String {
        format!("{}{}", self.repository_prefix, kind.label())
    }

    /// The repository of kiln-standard's imported debootstrap base.
    pub fn standard_base_repository(&self) -> String {
        format!("{}standard-base", self.repository_prefix)
    }

    fn contains(&self, image: &KilnImage) -> bool {
        image.labels.get(TEST_LABEL) == self.test_label.as_ref()
    }

    /// The family an image belongs to: the one whose repositories hold every
    /// tag of the image. None for untagged images and images tagged
    /// elsewhere too.
    pub fn family_of(&self, image: &KilnImage) -> Option<ImageKind> {
        let base = self.standard_base_repository();
        let mut families = image.repo_tags.iter().map(|tag| {
            let repository = tag.rsplit_once(':').map_or(tag.as_str(), |(repo, _)| repo);
            if repository == base {
                return Some(ImageKind::Standard);
            }
            ImageKind::ALL
                .into_iter()
                .find(|kind| self.repository(*kind) == repository)
        });
        let first = families.next()??;
        families
            .all(|family| family == Some(first))
            .then_some(first)
    }
}

/// One image Kiln built, as listed by Docker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KilnImage {
    /// `sha256:...`
    pub id: String,
    /// `repository:tag`, possibly none.
    pub repo_tags: Vec<String>,
    pub labels: HashMap<String, String>,
}

/// Everything the decision depends on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PruneFacts {
    /// Images labelled `kiln.inputs_hash`.
    pub images: Vec<KilnImage>,
    /// The image id `<repository>:latest` points to, per family that has one.
    pub latest: BTreeMap<ImageKind, String>,
    /// Image ids in the history of every family's latest image (including
    /// the latest images themselves).
    pub ancestors_of_latest: BTreeSet<String>,
    /// Image id → names of the containers (any state) created from it.
    pub containers_by_image: HashMap<String, Vec<String>>,
}

/// Why an image stays.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeepReason {
    /// `<repository>:latest` points to it.
    Latest,
    /// A family's current image is built on it.
    BaseOfLatest,
    /// Containers (named) were created from it.
    InUse { containers: Vec<String> },
    /// Its family has no `latest` tag, so which image is current is unknown.
    NoLatest,
}

/// What happens to one image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneDecision {
    Remove,
    Keep(KeepReason),
}

/// The outcome for one image, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PruneOutcome {
    Removed,
    Kept(KeepReason),
    /// Docker refused to remove it (409: a container started using it, or
    /// other images are built on it); Docker's message.
    KeptConflict {
        message: String,
    },
}

/// One image of a pruned family and what happened to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunedImage {
    pub kind: ImageKind,
    pub id: String,
    pub repo_tags: Vec<String>,
    pub outcome: PruneOutcome,
}

/// A failed prune. Each variant names the operation.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("list images labelled {INPUTS_HASH_LABEL}")]
    ListImages {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("list containers to find the images in use")]
    ListContainers {
        #[source]
        source: bollard::errors::Error,
    },
    #[error("read the history of {tag}")]
    ImageHistory {
        tag: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("remove image {id} ({tags})")]
    RemoveImage {
        id: String,
        tags: String,
        #[source]
        source: bollard::errors::Error,
    },
}

/// The decision for every image of the `kinds` families, in listing order.
/// Pure.
pub fn plan(
    scope: &PruneScope,
    kinds: &[ImageKind],
    facts: &PruneFacts,
) -> Vec<(ImageKind, KilnImage, PruneDecision)> {
    facts
        .images
        .iter()
        .filter(|image| scope.contains(image))
        .filter_map(|image| {
            let kind = scope.family_of(image).filter(|kind| kinds.contains(kind))?;
            let decision = if facts.latest.get(&kind) == Some(&image.id) {
                PruneDecision::Keep(KeepReason::Latest)
            } else if facts.ancestors_of_latest.contains(&image.id) {
                PruneDecision::Keep(KeepReason::BaseOfLatest)
            } else if let Some(containers) = facts.containers_by_image.get(&image.id) {
                PruneDecision::Keep(KeepReason::InUse {
                    containers: containers.clone(),
                })
            } else if !facts.latest.contains_key(&kind) {
                PruneDecision::Keep(KeepReason::NoLatest)
            } else {
                PruneDecision::Remove
            };
            Some((kind, image.clone(), decision))
        })
        .collect()
}

/// Removes the old images of the `kinds` families (see the module doc) and
/// reports every image of those families. Kept images are not errors; a
/// Docker failure other than a 409 conflict is.
pub async fn prune_images(
    docker: &Docker,
    scope: &PruneScope,
    kinds: &[ImageKind],
) -> Result<Vec<PrunedImage>, PruneError> {
    let facts = gather(docker, scope).await?;
    let mut report = Vec::new();
    let mut pending = Vec::new();
    for (kind, image, decision) in plan(scope, kinds, &facts) {
        match decision {
            PruneDecision::Remove => pending.push(report.len()),
            PruneDecision::Keep(_) => {}
        }
        report.push(PrunedImage {
            kind,
            id: image.id,
            repo_tags: image.repo_tags,
            outcome: match decision {
                PruneDecision::Remove => PruneOutcome::Removed,
                PruneDecision::Keep(reason) => PruneOutcome::Kept(reason),
            },
        });
    }
    // Docker refuses (409) an image that other images are built on: an old
    // kiln-standard-base until the old kiln-standard built on it is gone, an
    // old kiln-minimal until the old kiln-probe is. The listing order says
    // nothing about that, so conflicts are retried while a pass removes
    // something; what still conflicts after that is kept and reported.
    loop {
        let mut conflicts = Vec::new();
        for &idx in &pending {
            let image = &report[idx];
            match remove(docker, &image.id, &image.repo_tags).await? {
                PruneOutcome::Removed => report[idx].outcome = PruneOutcome::Removed,
                outcome => {
                    report[idx].outcome = outcome;
                    conflicts.push(idx);
                }
            }
        }
        if conflicts.is_empty() || conflicts.len() == pending.len() {
            break;
        }
        pending = conflicts;
    }
    Ok(report)
}

/// What [`prune_images`] would do now, without removing anything
/// (`kiln image prune --dry-run`).
pub async fn plan_prune(
    docker: &Docker,
    scope: &PruneScope,
    kinds: &[ImageKind],
) -> Result<Vec<(ImageKind, KilnImage, PruneDecision)>, PruneError> {
    let facts = gather(docker, scope).await?;
    Ok(plan(scope, kinds, &facts))
}

async fn remove(
    docker: &Docker,
    id: &str,
    repo_tags: &[String],
) -> Result<PruneOutcome, PruneError> {
    // By id, without force: Docker refuses an image in use or with children.
    // noprune=false also removes the untagged intermediate layers of its build.
    let options = RemoveImageOptionsBuilder::new()
        .force(false)
        .noprune(false)
        .build();
    match docker.remove_image(id, Some(options), None).await {
        Ok(_) => Ok(PruneOutcome::Removed),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 409,
            message,
        }) => Ok(PruneOutcome::KeptConflict { message }),
        // Gone already (another prune, an operator): nothing left to do.
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(PruneOutcome::Removed),
        Err(source) => Err(PruneError::RemoveImage {
            id: id.to_owned(),
            tags: repo_tags.join(", "),
            source,
        }),
    }
}

async fn gather(docker: &Docker, scope: &PruneScope) -> Result<PruneFacts, PruneError> {
    let filters = HashMap::from([("label".to_owned(), vec![INPUTS_HASH_LABEL.to_owned()])]);
    let listed = docker
        .list_images(Some(
            ListImagesOptionsBuilder::new().filters(&filters).build(),
        ))
        .await
        .map_err(|source| PruneError::ListImages { source })?;
    let images: Vec<KilnImage> = listed
        .into_iter()
        .map(|summary| KilnImage {
            id: summary.id,
            repo_tags: summary
                .repo_tags
                .into_iter()
                .filter(|tag| tag != "<none>:<none>")
                .collect(),
            labels: summary.labels,
        })
        .collect();

    let mut latest = BTreeMap::new();
    let mut ancestors_of_latest = BTreeSet::new();
    for kind in ImageKind::ALL {
        let tag = format!("{}:latest", scope.repository(kind));
        // Only an in-scope image counts as current: a test that moved
        // `kiln-minimal:latest` to its own image makes the family's current
        // image unknown, so nothing of it is removed meanwhile.
        let Some(image) = images.iter().find(|image| image.repo_tags.contains(&tag)) else {
            continue;
        };
        if !scope.contains(image) {
            continue;
        }
        latest.insert(kind, image.id.clone());
        let history =
            docker
                .image_history(&image.id)
                .await
                .map_err(|source| PruneError::ImageHistory {
                    tag: tag.clone(),
                    source,
                })?;
        ancestors_of_latest.extend(
            history
                .into_iter()
                .map(|item| item.id)
                .filter(|id| id.starts_with("sha256:")),
        );
    }

    let containers = docker
        .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
        .await
        .map_err(|source| PruneError::ListContainers { source })?;
    let mut containers_by_image: HashMap<String, Vec<String>> = HashMap::new();
    for container in containers {
        let Some(image_id) = container.image_id else {
            continue;
        };
        let name = container
            .names
            .and_then(|names| names.into_iter().next())
            .map(|name| name.trim_start_matches('/').to_owned())
            .or(container.id)
            .unwrap_or_default();
        containers_by_image.entry(image_id).or_default().push(name);
    }
    Ok(PruneFacts {
        images,
        latest,
        ancestors_of_latest,
        containers_by_image,
    })
}

#[cfg(test)]
#[path = "prune_tests.rs"]
mod tests;
