// CPU LoRA training-step benchmark on a fixed configuration: hidden 256,
// 4 layers, 8 heads / 4 KV heads, intermediate 688, byte vocab (258),
// sequence 256, batch 8, LoRA rank 8 (alpha 16) on all seven projections,
// frozen fp32 base, AdamW on the adapter.
//
// Prints machine-readable lines `name value unit`:
//   sheaf_tokens_per_s, sheaf_step_ms, sheaf_peak_rss_mb
// Usage: train_step [--threads N] [--steps S] [--warmup W]
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "core/lora.h"
#include "core/model.h"
#include "core/optimizer.h"
#include "ops/cpu/ops.h"

int main(int argc, char** argv) {
  using namespace sheaf;
  int threads = 0, steps = 10, warmup = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--threads")) threads = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--steps")) steps = std::atoi(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--warmup")) warmup = std::atoi(argv[i + 1]);
    else { std::fprintf(stderr, "unknown flag %s\n", argv[i]); return 2; }
  }
  ops::SetNumThreads(threads);
  ModelConfig c;
  c.hidden_size = 256;
  c.num_layers = 4;
  c.head_dim = 32;
  c.vocab_size = 258;
  c.max_position_embeddings = 256;
  c.tie_word_embeddings = false;
  c.layers.assign(4, LayerShape{8, 4, 688});
  auto model = Model::Create(c, NothingTrainable);
  if (!model.ok()) { std::fprintf(stderr, "%s\n", model.status().ToString().c_str()); return 1; }
  (*model)->InitRandom(1, 0.02f);
  LoraOptions lo;
  lo.rank = 8;
  lo.alpha = 16;
  auto adapter = LoraAdapter::Create(c, lo);
  if (!adapter.ok()) return 1;
  std::vector<ParamRef> refs;
  for (int i = 0; i < (*adapter)->params().num_slots(); ++i) {
    const Tensor v = (*adapter)->params().view(i), g = (*adapter)->grads().view(i);
    refs.push_back({(*adapter)->params().name(i), v.data, g.data, v.numel(), true});
  }
  AdamWOptions ao;
  ao.lr = 1e-4f;
  auto opt = AdamW::Create(refs, ao);
  if (!opt.ok()) return 1;

  constexpr int B = 8, T = 256;
  std::mt19937 rng(0);
  std::vector<int32_t> tokens(B * T), targets(B * T);
  for (int i = 0; i < B * T; ++i) {
    tokens[i] = static_cast<int32_t>(rng() % 258);
    targets[i] = static_cast<int32_t>(rng() % 258);
  }
  double total_s = 0;
  for (int s = 0; s < warmup + steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    (*adapter)->grads().Zero();
    auto loss = (*model)->Forward(tokens.data(), targets.data(), B, T, adapter->get(), true);
    if (!loss.ok() || !(*model)->Backward(1.0f / (B * T)).ok()) return 1;
    opt->Step();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (s >= warmup) total_s += dt;
  }
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  std::printf("sheaf_threads %d threads\n", ops::NumThreads());
  std::printf("sheaf_tokens_per_s %.1f tok/s\n", static_cast<double>(B) * T * steps / total_s);
  std::printf("sheaf_step_ms %.2f ms\n", 1000.0 * total_s / steps);
  std::printf("sheaf_peak_rss_mb %.1f MB\n", ru.ru_maxrss / 1024.0);
  return 0;
}
