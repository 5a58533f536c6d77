"""C++ protobuf / gRPC libraries generated with the system protoc.

Bazel 4's proto rules would download protobuf; instead a genrule runs Debian's
`protoc` (and `grpc_cpp_plugin` when grpc = True) with the workspace root as
the import path, so `import "proto/x.proto";` works everywhere.
"""

def sheaf_cc_proto(name, srcs, deps = [], proto_deps = [], grpc = False, visibility = None, testonly = False):
    """Generates `name` (a cc_library) from `srcs` (.proto files in this package).

    Args:
      name: the cc_library's name.
      srcs: .proto files.
      deps: other sheaf_cc_proto targets whose messages these protos import.
      proto_deps: the .proto files of `deps` (needed on the import path).
      grpc: also generate gRPC service stubs.
      visibility: as usual.
      testonly: as usual (test-only messages).
    """
    pkg = native.package_name()
    outs = []
    for src in srcs:
        base = src[:-len(".proto")]
        outs += [base + ".pb.h", base + ".pb.cc"]
        if grpc:
            outs += [base + ".grpc.pb.h", base + ".grpc.pb.cc"]
    plugin = ""
    if grpc:
        plugin = " --grpc_out=$(GENDIR) --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin"
    native.genrule(
        name = name + "_gen",
        testonly = testonly,
        srcs = srcs + proto_deps,
        outs = outs,
        cmd = "/usr/bin/protoc -I. --cpp_out=$(GENDIR)" + plugin + " " +
              " ".join([pkg + "/" + s for s in srcs]),
    )
    native.cc_library(
        name = name,
        srcs = [o for o in outs if o.endswith(".cc")],
        hdrs = [o for o in outs if o.endswith(".h")],
        copts = ["-Wno-unused-parameter", "-Wno-deprecated-declarations"],
        deps = deps + ["//third_party/system:grpc" if grpc else "//third_party/system:protobuf"],
        visibility = visibility,
        testonly = testonly,
    )
