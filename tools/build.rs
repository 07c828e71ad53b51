//! Generates the gRPC clients (tonic) for etcd's KV, Watch, Lease and Maintenance services,
//! reusing the protocol crate's message types; protox compiles the .proto files.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=../protocol/proto");
    let fds = protox::compile(["services/services.proto"], ["../protocol/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .build_transport(false)
        .extern_path(".etcdserverpb", "::etch_protocol::etcdserverpb")
        .extern_path(".mvccpb", "::etch_protocol::mvccpb")
        .compile_fds(fds)?;
    Ok(())
}
