//! Compiles `proto/cluster.proto` with protox, a protobuf compiler written in Rust, so
//! that building Kiln needs no system `protoc`. The generated code is always in step
//! with the `.proto` file: there is nothing committed that could go stale.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    let descriptors = protox::compile(["proto/cluster.proto"], ["proto"])?;
    // Upload chunks as `bytes::Bytes`: the chunk a worker reads is sent, and the chunk
    // the leader receives is written, without copying it into a `Vec` on either side.
    tonic_prost_build::configure().bytes(".kiln.cluster.v1.UploadChunk.data").compile_fds(descriptors)?;
    Ok(())
}
