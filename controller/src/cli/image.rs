//! `kiln image build [--kind minimal|standard|probe] [--keep-old]`: build (or
//! reuse, by content hash) the runtime images, with progress on stderr, then
//! remove the older images of the families it built. `kiln image prune
//! [--kind ...] [--dry-run]`: only the removal. One line per image on stdout.

use std::path::PathBuf;

use super::exit;
use crate::sandbox::Sandbox;
use crate::sandbox::image::prune::{
    KeepReason, PruneDecision, PruneOutcome, PruneScope, PrunedImage, plan_prune, prune_images,
};
use crate::sandbox::image::{ImageInputs, ImageKind, ensure_image_with_progress};

#[derive(clap::Subcommand)]
pub enum ImageCommand {
    /// Build the images that are missing or out of date, then remove the
    /// older images of the same families that no container uses.
    Build {
        /// Which image; all of minimal and standard when omitted.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// The static agent binary to put in the images.
        #[arg(
            long,
            default_value = "target/x86_64-unknown-linux-gnu/release/kiln-agent"
        )]
        agent: PathBuf,
        /// The static probe binary (for `--kind probe`).
        #[arg(long)]
        probe: Option<PathBuf>,
        /// The `runtime-image/` directory of the source tree.
        #[arg(long, default_value = "runtime-image")]
        runtime_image_dir: PathBuf,
        /// Keep the older images of the built families.
        #[arg(long)]
        keep_old: bool,
    },
    /// Remove the older images of Kiln's families (every image but the one
    /// `<repository>:latest` points to, what the current images are built on,
    /// and what any container uses).
    Prune {
        /// Which family; all of them when omitted.
        #[arg(long, value_enum)]
        kind: Option<Kind>,
        /// Only print what would be removed and what kept.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Kind {
    Minimal,
    Standard,
    Probe,
}

impl Kind {
    fn image_kind(self) -> ImageKind {
        match self {
            Kind::Minimal => ImageKind::Minimal,
            Kind::Standard => ImageKind::Standard,
            Kind::Probe => ImageKind::Probe,
        }
    }
}

pub async fn image(command: ImageCommand) -> u8 {
    super::init_tracing(true);
    let sandbox = match Sandbox::connect().await {
        Ok(sandbox) => sandbox,
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            return exit::UNAVAILABLE;
        }
    };
    match command {
        ImageCommand::Build {
            kind,
            agent,
            probe,
            runtime_image_dir,
            keep_old,
        } => {
            let kinds = match kind {
                Some(kind) => vec![kind.image_kind()],
                None => vec![ImageKind::Minimal, ImageKind::Standard],
            };
            let mut inputs = ImageInputs::new(agent, runtime_image_dir);
            if let Some(probe) = probe {
                inputs = inputs.with_probe(probe);
            }
            for kind in &kinds {
                let mut progress = |line: &str| eprintln!("{line}");
                match ensure_image_with_progress(sandbox.docker(), *kind, &inputs, &mut progress)
                    .await
                {
                    Ok(image) => println!("{} {}", image.tag, image.id),
                    Err(error) => {
                        eprintln!("error: {}", super::error_chain(&error));
                        return exit::UNAVAILABLE;
                    }
                }
            }
            if keep_old {
                return exit::OK;
            }
            prune(&sandbox, &kinds).await
        }
        ImageCommand::Prune { kind, dry_run } => {
            let kinds = match kind {
                Some(kind) => vec![kind.image_kind()],
                None => ImageKind::ALL.to_vec(),
            };
            if dry_run {
                return plan(&sandbox, &kinds).await;
            }
            prune(&sandbox, &kinds).await
        }
    }
}

async fn prune(sandbox: &Sandbox, kinds: &[ImageKind]) -> u8 {
    match prune_images(sandbox.docker(), &PruneScope::operator(), kinds).await {
        Ok(report) => {
            for image in &report {
                println!("{}", report_line(image));
            }
            let n_removed = report
                .iter()
                .filter(|image| image.outcome == PruneOutcome::Removed)
                .count();
            eprintln!("removed {n_removed} old image(s)");
            exit::OK
        }
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            exit::UNAVAILABLE
        }
    }
}

async fn plan(sandbox: &Sandbox, kinds: &[ImageKind]) -> u8 {
    match plan_prune(sandbox.docker(), &PruneScope::operator(), kinds).await {
        Ok(decisions) => {
            for (kind, image, decision) in decisions {
                let pruned = PrunedImage {
                    kind,
                    id: image.id,
                    repo_tags: image.repo_tags,
                    outcome: match decision {
                        PruneDecision::Remove => PruneOutcome::Removed,
                        PruneDecision::Keep(reason) => PruneOutcome::Kept(reason),
                    },
                };
                if pruned.outcome == PruneOutcome::Removed {
                    println!("would remove {} {}", pruned_name(&pruned), pruned.id);
                } else {
                    println!("{}", report_line(&pruned));
                }
            }
            exit::OK
        }
        Err(error) => {
            eprintln!("error: {}", super::error_chain(&error));
            exit::UNAVAILABLE
        }
    }
}

fn pruned_name(image: &PrunedImage) -> String {
    if image.repo_tags.is_empty() {
        image.kind.repository().to_owned()
    } else {
        image.repo_tags.join(",")
    }
}

/// `removed kiln-minimal:0a1b2c3d4e5f sha256:...` or `kept ... (why)`.
fn report_line(image: &PrunedImage) -> String {
    let name = pruned_name(image);
    let why = match &image.outcome {
        PruneOutcome::Removed => return format!("removed {name} {}", image.id),
        PruneOutcome::Kept(KeepReason::Latest) => "current".to_owned(),
        PruneOutcome::Kept(KeepReason::BaseOfLatest) => "a current image is built on it".to_owned(),
        PruneOutcome::Kept(KeepReason::InUse { containers }) => {
            format!("used by {}", containers.join(", "))
        }
        PruneOutcome::Kept(KeepReason::NoLatest) => format!(
            "no {}:latest, so the current image is unknown",
            image.kind.repository()
        ),
        PruneOutcome::KeptConflict { message } => format!("docker refused: {message}"),
    };
    format!("kept {name} {} ({why})", image.id)
}
