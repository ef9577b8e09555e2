//! The git revision of the build, for `co2cast_build_info` (unknown outside a git checkout).

fn main() {
    let rev = std::env::var("CO2CAST_GIT_REVISION").ok().filter(|s| !s.is_empty()).or_else(|| {
        let out = std::process::Command::new("git").args(["rev-parse", "--short=12", "HEAD"]).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    });
    println!("cargo:rustc-env=CO2CAST_GIT_REVISION={}", rev.unwrap_or_else(|| "unknown".into()));
    println!("cargo:rerun-if-env-changed=CO2CAST_GIT_REVISION");
    // HEAD names a branch whose ref file moves with each commit.
    let git = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.git");
    println!("cargo:rerun-if-changed={}", git.join("HEAD").display());
    if let Ok(head) = std::fs::read_to_string(git.join("HEAD"))
        && let Some(r) = head.trim().strip_prefix("ref: ")
    {
        println!("cargo:rerun-if-changed={}", git.join(r).display());
    }
}
