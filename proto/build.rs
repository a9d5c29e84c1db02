//! Compiles `proto/cluster.proto` with protox, a protobuf compiler written in Rust, so
//! that building Kiln needs no system `protoc`. The generated code is always in step
//! with the `.proto` file: there is nothing committed that could go stale.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    let descriptors = protox::compile(["proto/cluster.proto"], ["proto"])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
