//! What the operator's integration tests share.

/// The package's directory as cargo gives it to the running test: a binary built in another
/// checkout (the target directory is shared) would carry that checkout's path at compile time.
pub fn manifest_dir() -> String {
    std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_string())
}
