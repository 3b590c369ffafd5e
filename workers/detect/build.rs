//! Generates the ONNX protobuf types from ONNX's schema (proto/onnx.proto) with protobuf-codegen's
//! pure-Rust parser: no protoc, and no dependency on a model-import crate (onnx-ir brought burn's
//! tensor stack into every worker that reads a model, for these types alone).

fn main() {
    protobuf_codegen::Codegen::new()
        .pure()
        .includes(["proto"])
        .input("proto/onnx.proto")
        .cargo_out_dir("onnx-protos")
        .run_from_script();
}
