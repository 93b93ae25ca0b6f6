//! Compiles the .proto contracts with protox (pure Rust), so no `protoc` is needed anywhere.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/pleiades/v1/hlc.proto",
        "proto/pleiades/v1/auth.proto",
        "proto/pleiades/v1/system.proto",
        "proto/pleiades/v1/kv.proto",
        "proto/pleiades/v1/raft.proto",
        "proto/pleiades/v1/gossip.proto",
    ];
    for file in &files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
