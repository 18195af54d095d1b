//! VMM runtimes (QEMU microvm; Firecracker later), accelerator probe, image kit and VM state directories.
