//! `image build`, `image ls`, and resolving `--image` (building the default image on first use).

use std::path::PathBuf;

use anyhow::Context;
use firefleet_vmm::image::{
    build_image, default_guest_bin, BuildOptions, BuildProgress, ImageStore,
};
use indicatif::{ProgressBar, ProgressStyle};

use crate::{
    args::{Global, ImageCommand, Output},
    output::print,
};

/// The local image store: `--image-dir`, `FIREFLEET_IMAGE_DIR`, or `~/.cache/firefleet/images`.
pub fn image_dir(explicit: Option<&PathBuf>) -> PathBuf {
    if let Some(d) = explicit {
        return d.clone();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".cache/firefleet/images")
}

pub async fn image(g: &Global, cmd: ImageCommand) -> anyhow::Result<()> {
    let dir = image_dir(g.image_dir.as_ref());
    match cmd {
        ImageCommand::Build { name, guest_bin } => {
            let m = build(&dir, &name, guest_bin, g.output).await?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                Output::Table => println!("built image {} {}", m.name, m.digest),
            }
            Ok(())
        }
        ImageCommand::BuildDisk {
            name,
            from,
            size_mib,
        } => {
            let store = ImageStore::open(&dir)
                .with_context(|| format!("opening the image store {}", dir.display()))?;
            let size = match size_mib {
                Some(s) => s,
                None => default_disk_size_mib(&from)?,
            };
            let m =
                tokio::task::spawn_blocking(move || store.add_disk_from_dir(&from, size, &name))
                    .await?
                    .context("building the disk image")?;
            match g.output {
                Output::Json => println!("{}", serde_json::to_string_pretty(&m)?),
                Output::Table => println!(
                    "built disk image {} {} ({} MiB)",
                    m.name,
                    m.digest,
                    m.size_bytes >> 20
                ),
            }
            Ok(())
        }
        ImageCommand::Ls => {
            let store = ImageStore::open(&dir)
                .with_context(|| format!("opening the image store {}", dir.display()))?;
            let boot = store.list()?;
            let disks = store.list_disks()?;
            let mut rows: Vec<Vec<String>> = boot
                .iter()
                .map(|m| {
                    vec![
                        m.name.clone(),
                        "boot".into(),
                        m.digest.clone(),
                        format!("kernel {}", m.kernel_version),
                    ]
                })
                .collect();
            rows.extend(disks.iter().map(|m| {
                vec![
                    m.name.clone(),
                    "disk".into(),
                    m.digest.clone(),
                    format!("ext4 {} MiB", m.size_bytes >> 20),
                ]
            }));
            let all = serde_json::json!({ "boot": boot, "disks": disks });
            print(g.output, &all, &["NAME", "KIND", "DIGEST", "DETAIL"], rows)
        }
    }
}

/// Builds an image with a progress bar on a terminal.
pub async fn build(
    dir: &std::path::Path,
    name: &str,
    guest_bin: Option<PathBuf>,
    output: Output,
) -> anyhow::Result<firefleet_vmm::image::ImageManifest> {
    let guest_bin = match guest_bin {
        Some(p) => p,
        None => default_guest_bin()?,
    };
    let store = ImageStore::open(dir)
        .with_context(|| format!("opening the image store {}", dir.display()))?;
    let work_dir = dir.join(".work");
    let opts = BuildOptions {
        name: name.to_owned(),
        guest_bin,
        work_dir,
        kernel_package: None,
    };
    let show = output == Output::Table && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let m = tokio::task::spawn_blocking(move || {
        let bar = if show { ProgressBar::new(0) } else { ProgressBar::hidden() };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:30} [{bar:30}] {pos}/{len}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut progress = |p: BuildProgress| {
            bar.set_message(format!("{}: {}", p.stage.as_str(), p.message));
            bar.set_length(p.total.unwrap_or(0).max(p.done).max(1));
            bar.set_position(p.done);
            if !show {
                tracing::debug!(stage = p.stage.as_str(), done = p.done, total = ?p.total, "image build");
            }
        };
        let r = build_image(&store, &opts, &mut progress);
        bar.finish_and_clear();
        r
    })
    .await??;
    Ok(m)
}

/// Room for a disk image: the directory's bytes plus a third, plus 16 MiB for ext4's own
/// structures, in MiB.
fn default_disk_size_mib(dir: &std::path::Path) -> anyhow::Result<u64> {
    fn walk(p: &std::path::Path) -> std::io::Result<u64> {
        let mut total = 0;
        for e in std::fs::read_dir(p)? {
            let e = e?;
            let meta = e.metadata()?;
            total += if meta.is_dir() {
                walk(&e.path())?
            } else {
                meta.len()
            };
        }
        Ok(total)
    }
    let bytes = walk(dir).with_context(|| format!("reading {}", dir.display()))?;
    Ok((bytes + bytes / 3).div_ceil(1 << 20) + 16)
}

/// Resolves a disk image name or digest (`image=` of `vm run --disk`) to its digest.
pub fn resolve_disk(g: &Global, image: &str) -> anyhow::Result<String> {
    let dir = image_dir(g.image_dir.as_ref());
    let store = ImageStore::open(&dir)
        .with_context(|| format!("opening the image store {}", dir.display()))?;
    match store.resolve_disk(image) {
        Ok(i) => Ok(i.digest),
        Err(_) if image.starts_with("sha256:") => Ok(image.to_owned()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "resolving disk image {image:?} in {} (build one with `firefleet image build-disk`)",
                dir.display()
            )
        }),
    }
}

/// Resolves an image name or digest to a digest, building the default image if it is missing.
pub async fn resolve_or_build(g: &Global, image: &str) -> anyhow::Result<String> {
    let dir = image_dir(g.image_dir.as_ref());
    let store = ImageStore::open(&dir)
        .with_context(|| format!("opening the image store {}", dir.display()))?;
    match store.resolve(image) {
        Ok(i) => Ok(i.digest),
        Err(_) if image.starts_with("sha256:") => Ok(image.to_owned()),
        Err(_) if image == "default" => {
            eprintln!("no default guest image yet: building one (once)...");
            Ok(build(&dir, "default", None, g.output).await?.digest)
        }
        Err(e) => Err(e).with_context(|| format!("resolving image {image:?} in {}", dir.display())),
    }
}
