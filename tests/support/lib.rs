//! Support for Kiln's end-to-end suites: locating the workspace, the gallery
//! and the `kiln` binary, and reading a gallery recipe's documented metadata.

pub mod server;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the e2e crate lives one level below the workspace root")
        .to_path_buf()
}

pub fn gallery_dir() -> PathBuf {
    workspace_root().join("gallery")
}

/// One curated recipe: its file name, source text and `metadata` block.
pub struct GalleryRecipe {
    pub file_name: String,
    pub source: String,
    pub metadata: Value,
}

impl GalleryRecipe {
    /// `metadata.expected`, the documented outcome of a run.
    pub fn expected(&self) -> &Value {
        &self.metadata["expected"]
    }
}

/// Every `*.yaml` in the gallery, sorted by file name.
pub fn gallery() -> Result<Vec<GalleryRecipe>> {
    let mut recipes = Vec::new();
    for entry in std::fs::read_dir(gallery_dir()).context("read the gallery directory")? {
        let path = entry?.path();
        if path.extension().and_then(|ext| ext.to_str()) != Some("yaml") {
            continue;
        }
        let source =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        let document: Value = serde_saphyr::from_str(&source)
            .with_context(|| format!("parse {} as YAML", path.display()))?;
        let file_name = path
            .file_name()
            .and_then(|name| name.to_str())
            .context("gallery file names are UTF-8")?
            .to_owned();
        recipes.push(GalleryRecipe {
            file_name,
            source,
            metadata: document["metadata"].clone(),
        });
    }
    recipes.sort_by(|a, b| a.file_name.cmp(&b.file_name));
    Ok(recipes)
}
