//! Generates the gRPC server traits for etcd's services (tonic), reusing the protocol crate's
//! message types; protox compiles the .proto files, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/services.proto");
    println!("cargo:rerun-if-changed=../protocol/proto/rpc.proto");
    let fds = protox::compile(["proto/services.proto"], ["proto", "../protocol/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .extern_path(".etcdserverpb", "::etch_protocol::etcdserverpb")
        .extern_path(".mvccpb", "::etch_protocol::mvccpb")
        .compile_fds(fds)?;
    Ok(())
}
