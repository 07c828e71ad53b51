//! Generates the gRPC server traits for etcd's services (tonic), reusing the protocol crate's
//! message types; protox compiles the .proto files, so no system protoc is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The service definitions live with the messages, in the protocol crate's proto/services/.
    let services = [
        "services/services.proto",
        "services/lock.proto",
        "services/election.proto",
    ];
    println!("cargo:rerun-if-changed=../protocol/proto");
    let fds = protox::compile(services, ["../protocol/proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .build_transport(false)
        .extern_path(".etcdserverpb", "::etch_protocol::etcdserverpb")
        .extern_path(".mvccpb", "::etch_protocol::mvccpb")
        .extern_path(".authpb", "::etch_protocol::authpb")
        .extern_path(".v3lockpb", "::etch_protocol::v3lockpb")
        .extern_path(".v3electionpb", "::etch_protocol::v3electionpb")
        .compile_fds(fds)?;
    Ok(())
}
