// Training-step throughput of RecLoRA's mixture against plain LoRA on the
// same batch, in one process (alternating repeats, median), so the figure is
// a ratio, not an absolute time on a noisy machine.
//
//   bench_mix MODEL_DIR [--batch 8] [--seq 200] [--experts 8] [--repeats 7]
// prints `name value unit` lines: plain_lora_samples_per_s, mixture_*,
// mixture_over_plain. The mixture step includes the gates' forward and
// backward (input width 80, the CRM's final layer; the CRM itself is frozen
// and not timed) and the weights mixing on q_proj, v_proj, r 8.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/rng.h"
#include "core/crm/gate.h"
#include "core/model.h"
#include "core/model_config.h"
#include "ops/cpu/ops.h"

using namespace sheaf;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: bench_mix MODEL_DIR [--batch N] [--seq N] [--experts N] [--repeats N]\n");
    return 2;
  }
  const std::string dir = argv[1];
  int B = 8, T = 200, N = 8, repeats = 7;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string f = argv[i];
    const int v = std::atoi(argv[i + 1]);
    if (f == "--batch") B = v;
    else if (f == "--seq") T = v;
    else if (f == "--experts") N = v;
    else if (f == "--repeats") repeats = v;
  }
  auto config = LoadModelConfig(dir);
  if (!config.ok()) { std::fprintf(stderr, "%s\n", std::string(config.status().message()).c_str()); return 1; }
  auto model = Model::Create(*config, NothingTrainable);
  if (!model.ok() || !(*model)->LoadWeights(dir).ok()) { std::fprintf(stderr, "cannot load %s\n", dir.c_str()); return 1; }
  LoraOptions lo;
  lo.targets = {"q_proj", "v_proj"};
  lo.rank = 8;
  lo.alpha = 16;
  auto plain = LoraAdapter::Create(*config, lo);
  lo.num_experts = N;
  auto bank = LoraAdapter::Create(*config, lo);
  crm::GateOptions go;
  go.in_dim = 80;
  go.num_experts = N;
  auto gates = crm::GateBank::Create(go, static_cast<int>((*bank)->all_modules().size()));
  if (!plain.ok() || !bank.ok() || !gates.ok()) return 1;
  (*gates)->InitRandom(1);
  uint64_t s = 1;
  std::vector<int32_t> tokens(static_cast<size_t>(B) * T);
  for (auto& t : tokens) t = static_cast<int32_t>(SplitMix64Next(s) % 256);
  std::vector<float> x(static_cast<size_t>(B) * 80);
  for (auto& v : x) v = static_cast<float>(SplitMix64Next(s) % 1000) / 500.0f - 1.0f;
  std::vector<int32_t> rows, targets;
  for (int b = 0; b < B; ++b) {
    rows.push_back(b * T + T - 1);
    targets.push_back(b % 2);
  }
  const LossHead head = LossHead::SelectedRows(rows, {110, 121}, targets);
  auto step = [&](bool mixture) {
    const auto t0 = std::chrono::steady_clock::now();
    AdapterPlan plan(config->num_layers);
    if (mixture) {
      (*bank)->grads().Zero();
      (*gates)->grads().Zero();
      (void)(*gates)->Forward(x.data(), B, true, 3);
      (void)(*gates)->Attach(plan, **bank, T, AdapterMixing::kAdapterMixingWeights);
    } else {
      (*plain)->grads().Zero();
      (void)plan.AddAdapter(**plain);
    }
    (void)(*model)->Forward(tokens.data(), nullptr, B, T, plan, true, head);
    (void)(*model)->Backward(1.0f / static_cast<float>(B));
    if (mixture) (*gates)->Backward();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  step(false);
  step(true);  // warm up (activation planning)
  std::vector<double> tp, tm;
  for (int r = 0; r < repeats; ++r) {
    tp.push_back(step(false));
    tm.push_back(step(true));
  }
  std::sort(tp.begin(), tp.end());
  std::sort(tm.begin(), tm.end());
  const double p = B / tp[tp.size() / 2], m = B / tm[tm.size() / 2];
  std::printf("plain_lora_samples_per_s %.3f samples/s\n", p);
  std::printf("mixture_n%d_samples_per_s %.3f samples/s\n", N, m);
  std::printf("mixture_over_plain %.3f ratio\n", m / p);
  return 0;
}
