// LoRA training-step benchmark.
//
// Default: a fixed configuration (hidden 256, 4 layers, 8 heads / 4 KV heads,
// intermediate 688, byte vocab, sequence 256, batch 8, LoRA rank 8 / alpha 16
// on all seven projections, frozen fp32 base, AdamW on the adapter) on one
// rank. Under mpirun (world size > 1, or --ranks to state the expectation)
// the frozen weights are sharded across the ranks and gathered per layer,
// adapter gradients all-reduced, and the global batch is split over the
// ranks; --hidden/--layers/--intermediate make the model big enough that the
// frozen weights dominate memory.
//
// Prints machine-readable lines `name value unit` (rank 0 only), e.g.
//   sheaf_tokens_per_s, sheaf_step_ms, sheaf_peak_rss_mb (max over ranks),
//   sheaf_comm_wait_ms_per_step, sheaf_bytes_{frozen_gather,adapter_grad,control}_per_step
// Usage: train_step [--prepare] [--threads N] [--steps S] [--warmup W] [--ranks N]
//                   [--hidden C] [--layers L] [--intermediate I] [--batch B] [--seq T]
// --seq sets the sequence length (default 256) and the model's context;
// --compute bf16 runs the frozen projections in bf16 (ModelOptions::compute);
// --fuse 0 turns the fused projections off (ModelOptions::fuse_projections).
// --losses 1 prints every step's loss (sheaf_loss_step_N), e.g. to compare
// kernel choices (SHEAF_CPU_KERNELS=portable|avx512).
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "core/backend.h"
#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "dist/communicator.h"
#include "dist/grad_reducer.h"
#include "dist/mpi_communicator.h"
#include "dist/sharded_weights.h"
#include "ops/cpu/ops.h"

namespace {

int Die(const absl::Status& s) {
  std::fprintf(stderr, "train_step: %s\n", s.ToString().c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace sheaf;
  ops::UsePassiveOmpWaitPolicy(argv);
  int threads = 0, steps = 10, warmup = 2, ranks = 0, hidden = 256, layers = 4, inter = 688, B = 8,
      T = 256;
  bool prepare = false;  // only write the random model file for sharded runs
  bool print_losses = false;  // --losses 1: each step's (rank 0) mean loss
  bool bf16_compute = false;  // --compute bf16: ModelOptions::compute
  bool fuse = true;           // --fuse 0: ModelOptions::fuse_projections off
  for (int i = 1; i < argc && !std::strcmp(argv[i], "--prepare"); ++i) prepare = true;
  for (int i = 1 + (prepare ? 1 : 0); i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--compute")) {
      if (std::strcmp(argv[i + 1], "bf16") && std::strcmp(argv[i + 1], "f32")) {
        std::fprintf(stderr, "train_step: --compute %s (use f32 or bf16)\n", argv[i + 1]);
        return 2;
      }
      bf16_compute = !std::strcmp(argv[i + 1], "bf16");
      continue;
    }
    const int v = std::atoi(argv[i + 1]);
    if (!std::strcmp(argv[i], "--threads")) threads = v;
    else if (!std::strcmp(argv[i], "--steps")) steps = v;
    else if (!std::strcmp(argv[i], "--warmup")) warmup = v;
    else if (!std::strcmp(argv[i], "--ranks")) ranks = v;
    else if (!std::strcmp(argv[i], "--hidden")) hidden = v;
    else if (!std::strcmp(argv[i], "--layers")) layers = v;
    else if (!std::strcmp(argv[i], "--intermediate")) inter = v;
    else if (!std::strcmp(argv[i], "--batch")) B = v;
    else if (!std::strcmp(argv[i], "--seq")) T = v;
    else if (!std::strcmp(argv[i], "--losses")) print_losses = v != 0;
    else if (!std::strcmp(argv[i], "--fuse")) fuse = v != 0;
    else { std::fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
  }
  Backend* backend = DefaultBackend();  // "cpu", registered by //ops/cpu:ops
  if (backend == nullptr) return Die(absl::FailedPreconditionError("no compute backend linked"));
  backend->SetNumThreads(threads);
  auto rank_info = dist::DiscoverRank();
  if (!rank_info.ok()) return Die(rank_info.status());
  const int n = rank_info->world_size, me = rank_info->world_rank;
  if (ranks > 0 && ranks != n) {
    std::fprintf(stderr, "train_step: --ranks %d but the launcher started %d (use mpirun -np %d)\n", ranks, n, ranks);
    return 2;
  }
  if (T < 1 || B < 1) {
    std::fprintf(stderr, "train_step: --seq and --batch must be >= 1\n");
    return 2;
  }
  if (B % n != 0) {
    std::fprintf(stderr, "train_step: batch %d not divisible by %d ranks\n", B, n);
    return 2;
  }
  std::unique_ptr<dist::MpiCommunicator> comm;
  if (n > 1) {
    auto c = dist::MpiCommunicator::Create();
    if (!c.ok()) return Die(c.status());
    comm = std::move(*c);
  }

  ModelConfig c;
  c.hidden_size = hidden;
  c.num_layers = layers;
  c.head_dim = 32;
  c.vocab_size = 258;
  c.max_position_embeddings = T;
  c.layers.assign(static_cast<size_t>(layers), LayerShape{hidden / 32, hidden / 64 > 0 ? hidden / 64 : 1, inter});
  const int b = B / n;

  // Sharded runs read the frozen weights from a file: rank 0 writes a random
  // model once (shared /tmp on one machine).
  const std::string dir = "/tmp/sheaf_bench_model_" + std::to_string(hidden) + "x" + std::to_string(layers) +
                          "x" + std::to_string(inter);
  ModelOptions mo;
  mo.external_frozen = n > 1;
  mo.compute = bf16_compute ? DType::kDTypeBF16 : DType::kDTypeF32;
  mo.fuse_projections = fuse;
  mo.backend = backend;
  auto model = Model::Create(c, NothingTrainable, mo);
  if (!model.ok()) return Die(model.status());
  std::unique_ptr<dist::ShardedWeights> sharded;
  if (prepare) {
    // A separate process, so that writing the full model does not count in
    // the sharded ranks' peak RSS.
    if (std::filesystem::exists(dir + "/model.safetensors")) return 0;
    auto full = Model::Create(c, NothingTrainable);
    if (!full.ok()) return Die(full.status());
    (*full)->InitRandom(1, 0.02f);
    if (absl::Status s = (*full)->Save(dir); !s.ok()) return Die(s);
    return 0;
  }
  if (n > 1) {
    if (!std::filesystem::exists(dir + "/model.safetensors")) {
      std::fprintf(stderr, "train_step: %s missing: run `train_step --prepare` with the same shape flags first\n", dir.c_str());
      return 2;
    }
    auto sw = dist::ShardedWeights::Create(model->get(), comm.get(), dir, {});
    if (!sw.ok()) return Die(sw.status());
    sharded = std::move(*sw);
  } else {
    (*model)->InitRandom(1, 0.02f);
  }
  LoraOptions lo;
  lo.rank = 8;
  lo.alpha = 16;
  auto adapter = LoraAdapter::Create(c, lo);
  if (!adapter.ok()) return Die(adapter.status());
  std::unique_ptr<dist::GradReducer> reducer;
  if (n > 1) {
    auto r = dist::GradReducer::Create(model->get(), adapter->get(), comm.get(), {});
    if (!r.ok()) return Die(r.status());
    reducer = std::move(*r);
  }
  std::vector<ParamRef> refs;
  for (int i = 0; i < (*adapter)->params().num_slots(); ++i) {
    const Tensor v = (*adapter)->params().view(i), g = (*adapter)->grads().view(i);
    refs.push_back({(*adapter)->params().name(i), v.data, g.data, v.numel(), true});
  }
  AdamWOptions ao;
  ao.lr = 1e-4f;
  auto opt = AdamW::Create(refs, ao, backend);
  if (!opt.ok()) return Die(opt.status());

  std::mt19937 rng(0);
  std::vector<int32_t> tokens(static_cast<size_t>(B) * T), targets(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) {
    tokens[i] = static_cast<int32_t>(rng() % 258);
    targets[i] = static_cast<int32_t>(rng() % 258);
  }
  double total_s = 0, total_cpu_s = 0;
  auto cpu_seconds = [] {
    timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
  };
  int64_t bytes0[dist::kNumPurposes] = {0, 0, 0}, wait0 = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    if (s == warmup && comm) {
      for (int p = 0; p < dist::kNumPurposes; ++p) bytes0[p] = comm->bytes_sent(static_cast<dist::Purpose>(p));
      wait0 = comm->stats().wait_ns.load();
    }
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = cpu_seconds();
    (*adapter)->grads().Zero();
    auto loss = (*model)->Forward(tokens.data() + me * b * T, targets.data() + me * b * T, b, T,
                                  adapter->get(), true);
    if (!loss.ok()) return Die(loss.status());
    if (print_losses && me == 0) std::printf("sheaf_loss_step_%d %.9g nats\n", s, loss->mean());
    if (absl::Status st = (*model)->Backward(1.0f / (B * T)); !st.ok()) return Die(st);
    if (reducer) {
      if (absl::Status st = reducer->Finish(); !st.ok()) return Die(st);
    }
    opt->Step();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) total_s += dt;
    if (s >= warmup) total_cpu_s += cpu_seconds() - c0;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  // Max RSS and slowest step time over ranks (control traffic, after timing).
  float agg[2] = {static_cast<float>(ru.ru_maxrss / 1024.0), static_cast<float>(total_s)};
  if (comm) {
    std::vector<float> all(static_cast<size_t>(2 * n));
    auto w = comm->AllGather(all.data(), agg, 2, dist::Purpose::kPurposeControl);
    if (absl::Status st = w->Wait(std::chrono::minutes(1)); !st.ok()) return Die(st);
    for (int r = 0; r < n; ++r) {
      agg[0] = std::max(agg[0], all[static_cast<size_t>(2 * r)]);
      agg[1] = std::max(agg[1], all[static_cast<size_t>(2 * r + 1)]);
    }
  }
  if (me != 0) return 0;
  std::printf("sheaf_ranks %d ranks\n", n);
  std::printf("sheaf_threads %d threads\n", backend->NumThreads());
  std::printf("sheaf_batch %d sequences\n", B);
  std::printf("sheaf_seq %d tokens\n", T);
  std::printf("sheaf_frozen_params %lld params\n", static_cast<long long>(c.NumParams()));
  std::printf("sheaf_tokens_per_s %.1f tok/s\n", static_cast<double>(B) * T * steps / agg[1]);
  std::printf("sheaf_step_ms %.2f ms\n", 1000.0 * agg[1] / steps);
  // Tokens per CPU-second of this process (rank 0): unaffected by the time
  // a shared machine deschedules us; with several threads it also counts
  // their waiting (passive OpenMP waits keep that small).
  std::printf("sheaf_tokens_per_cpu_s %.1f tok/cpu-s\n", static_cast<double>(b) * T * steps / total_cpu_s);
  std::printf("sheaf_peak_rss_mb %.1f MB\n", agg[0]);
  if (sharded) {
    std::printf("sheaf_frozen_shard_mb %.1f MB\n", sharded->shard_bytes() / 1e6);
    std::printf("sheaf_gather_buffers_mb %.1f MB\n", sharded->gather_buffer_bytes() / 1e6);
  }
  if (comm) {
    std::printf("sheaf_comm_wait_ms_per_step %.2f ms\n", (comm->stats().wait_ns.load() - wait0) / 1e6 / steps);
    for (int p = 0; p < dist::kNumPurposes; ++p) {
      std::printf("sheaf_bytes_%s_per_step %.0f B\n", dist::PurposeName(static_cast<dist::Purpose>(p)),
                  static_cast<double>(comm->bytes_sent(static_cast<dist::Purpose>(p)) - bytes0[p]) / steps);
    }
  }
  return 0;
}
