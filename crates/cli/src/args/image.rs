//! `image`: the local guest image store.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a guest image from Debian's cloud kernel and firefleet-guest.
    Build {
        /// Image name.
        #[arg(long, default_value = "default")]
        name: String,
        /// The static firefleet-guest binary (default: next to this binary, or FIREFLEET_GUEST_BIN).
        #[arg(long)]
        guest_bin: Option<PathBuf>,
    },
    /// Build an ext4 disk image from a directory (`mkfs.ext4 -d`), for `vm run --disk`.
    BuildDisk {
        /// Image name.
        #[arg(long)]
        name: String,
        /// The directory whose contents the filesystem holds.
        #[arg(long)]
        from: PathBuf,
        /// Filesystem size in MiB (default: the directory's size plus room).
        #[arg(long)]
        size_mib: Option<u64>,
    },
    /// List images (boot images and disk images).
    Ls,
}
