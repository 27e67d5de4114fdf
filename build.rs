//! Embeds the git revision as the decision's `runtime.build` ("local" outside a checkout).

use std::process::Command;

fn main() {
    let revision = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit()));
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let build = revision.as_deref().unwrap_or("local");
    println!("cargo:rustc-env=GATE_VERSION_LINE={version} (build {build})");
    if let Some(revision) = revision {
        println!("cargo:rustc-env=GATE_BUILD_REVISION={revision}");
    }
    // Rebuild when HEAD moves, so the reported build is the one that was compiled.
    if let Ok(out) = Command::new("git")
        .args(["rev-parse", "--git-dir"])
        .output()
    {
        let git_dir = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !git_dir.is_empty() {
            println!("cargo:rerun-if-changed={git_dir}/HEAD");
            println!("cargo:rerun-if-changed={git_dir}/refs/heads");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
