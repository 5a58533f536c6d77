"""Helpers for CUDA targets; see //third_party/cuda:BUILD for the gating."""

def cuda_only():
    """target_compatible_with for targets that need CUDA: --config=cuda only."""
    return select({
        "//third_party/cuda:enabled": [],
        "//conditions:default": ["//third_party/cuda:requires_config_cuda"],
    })

def if_cuda(if_true, if_false = []):
    """`if_true` under --config=cuda, else `if_false` (e.g. for deps on @cuda)."""
    return select({
        "//third_party/cuda:enabled": if_true,
        "//conditions:default": if_false,
    })

# SASS for A100 (sm_80) and H100/H200 (sm_90) plus compute_90 PTX, which the
# driver JIT-compiles for anything newer. CUDA 13 no longer targets < sm_75.
CUDA_GENCODE = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=sm_90",
    "-gencode=arch=compute_90,code=compute_90",
]

def cuda_library(name, srcs, hdrs = [], deps = [], nvcc_flags = [], **kwargs):
    """A cc_library from .cu files, compiled by the toolkit's nvcc.

    Bazel 4 has no CUDA rules, so each .cu becomes one object file through a
    genrule that runs @cuda//:nvcc (host compiler: the gcc on PATH), and the
    objects are wrapped in a cc_library with `hdrs` and libcudart. .cu files
    may include headers from `hdrs` by workspace path ("dist/cuda/x.h") and
    the CUDA headers; nothing else (no absl: launchers return cudaError_t).
    The target is incompatible, hence skipped, unless --config=cuda.
    """
    objs = []
    for src in srcs:
        if not src.endswith(".cu"):
            fail("cuda_library %s: %s is not a .cu file" % (name, src))
        obj = "_objs_cu/%s/%s.pic.o" % (name, src[:-3])
        objs.append(obj)
        native.genrule(
            name = "%s_%s_nvcc" % (name, src[:-3].replace("/", "_")),
            srcs = [src] + hdrs,
            outs = [obj],
            # Behind the select so that a default build never loads @cuda.
            tools = if_cuda(["@cuda//:nvcc"]),
            # nvcc keeps its intermediate files in TMPDIR; the sandbox only
            # lets us write under the output tree.
            cmd = " ".join([
                "TMPDIR=$$(mktemp -d -p $(@D))",
                "&& $(location @cuda//:nvcc)",
                "-std=c++20 -O2 -Xcompiler=-fPIC -Xcompiler=-Wall",
                "-I. -I$(GENDIR)",
                " ".join(CUDA_GENCODE + nvcc_flags),
                "-c $(location %s) -o $@" % src,
                "&& rm -rf $$TMPDIR",
            ]),
            target_compatible_with = cuda_only(),
            message = "nvcc %s" % src,
        )
    native.cc_library(
        name = name,
        srcs = objs,
        hdrs = hdrs,
        deps = deps + if_cuda(["@cuda//:cudart"]),
        linkstatic = True,
        target_compatible_with = cuda_only(),
        **kwargs
    )
