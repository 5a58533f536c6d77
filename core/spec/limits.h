// Upper bounds of the numeric spec fields (docs/spec_limits.md lists them
// with their reasons). A value above its bound is refused by ValidateJobSpec
// with the field and the bound named, before any world allocates for it:
// one tenant's spec must never take a worker world down (issue 9, item 1).
//
// The bounds are far above any run this system is built for (a 70B model
// has hidden 8192, 80 layers, vocab 128256), so that they refuse only
// values that cannot be meant; what fits a world is the memory estimate's
// business (core/spec/memory_estimate.h).
#ifndef SHEAF_CORE_SPEC_LIMITS_H_
#define SHEAF_CORE_SPEC_LIMITS_H_

#include <cstdint>

namespace sheaf::spec_limits {

// train.*
inline constexpr int64_t kMaxBatchSize = 65536;
inline constexpr int64_t kMaxGradAccum = 65536;
inline constexpr int64_t kMaxSteps = 1'000'000'000;  // also warmup, every-N
inline constexpr int64_t kMaxEpochs = 1'000'000;
inline constexpr int64_t kMaxEvalBatches = 1'000'000;
inline constexpr int64_t kMaxKeepCheckpoints = 10'000;
// OpenMP threads per rank; more than this is never a machine, and a huge
// value made a worker create threads until it hung (issue 9).
inline constexpr int64_t kMaxThreads = 1024;
inline constexpr double kMaxGradClip = 1e6;

// data.*
inline constexpr int64_t kMaxSeqLen = 131072;

// optimizer.*
inline constexpr double kMaxLearningRate = 10.0;
inline constexpr double kMaxEps = 1.0;
inline constexpr double kMaxWeightDecay = 10.0;

// Adapter sections (lora.adapter and the kinds to come).
inline constexpr int64_t kMaxLoraRank = 4096;
inline constexpr int64_t kMaxLayerIndex = 4095;
inline constexpr double kMaxLoraAlpha = 1e6;

// Model shapes (pretrain.model; config.json readers may share them).
inline constexpr int64_t kMaxHiddenSize = 65536;
inline constexpr int64_t kMaxIntermediateSize = 262144;
inline constexpr int64_t kMaxLayers = 1024;
inline constexpr int64_t kMaxHeads = 1024;
inline constexpr int64_t kMaxHeadDim = 4096;
inline constexpr int64_t kMaxVocabSize = 4'194'304;  // 2^22
inline constexpr int64_t kMaxPositionEmbeddings = 1'048'576;
inline constexpr double kMaxRopeTheta = 1e12;
inline constexpr double kMaxRmsNormEps = 1.0;
inline constexpr double kMaxInitStd = 1.0;

}  // namespace sheaf::spec_limits

#endif  // SHEAF_CORE_SPEC_LIMITS_H_
