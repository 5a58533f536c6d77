// Defaults and checks of the spec sections that several job kinds share
// (an adapter, a model shape), so that each kind's file (lora_kind.cc,
// pretrain_kind.cc, and the kinds to come) composes them with its own key
// prefix instead of copying them.
#ifndef SHEAF_CORE_SPEC_SECTIONS_H_
#define SHEAF_CORE_SPEC_SECTIONS_H_

#include <array>
#include <string>
#include <string_view>

#include "core/spec/limits.h"
#include "core/spec/problems.h"
#include "proto/job_spec.pb.h"

namespace sheaf {

// Every module name AdapterSpec.targets may hold, in the order of a Llama
// layer's weights, lm_head last.
inline constexpr std::array<std::string_view, 8> kAdapterTargetNames = {
    "q_proj",    "k_proj",  "v_proj",    "o_proj",
    "gate_proj", "up_proj", "down_proj", "lm_head"};

// The targets when none are given: every attention and MLP projection.
inline constexpr std::array<std::string_view, 7> kDefaultAdapterTargets = {
    "q_proj",    "k_proj",  "v_proj",   "o_proj",
    "gate_proj", "up_proj", "down_proj"};

// A count in [min, max] (max from core/spec/limits.h): the two messages
// "must be >= MIN, got V" and "must be <= MAX, got V". For the kinds' own
// numeric fields, so that every one of them has a documented upper bound.
void CheckCount(const std::string& path, int64_t value, int64_t min,
                int64_t max, Problems& problems);

// A real number in (0, max]: "must be > 0" / "must be <= MAX"; NaN and
// infinities fail.
void CheckPositiveAtMost(const std::string& path, double value, double max,
                         Problems& problems);

// Targets, lora rank and alpha where unset.
void ApplyAdapterDefaults(proto::AdapterSpec* adapter);

// `prefix` is the section's key path ("lora.adapter"); problems are
// reported as `prefix.field: reason`.
void CheckAdapter(const proto::AdapterSpec& adapter, const std::string& prefix,
                  Problems& problems);

// Defaults of a shape built from scratch; `seq_len` is data.seq_len (the
// default max_position_embeddings).
void ApplyModelShapeDefaults(proto::ModelShape* model, int32_t seq_len);

// `model` has had its defaults applied; `given` is what the user wrote;
// `data` (defaults applied) bounds the positions and the vocabulary.
void CheckModelShape(const proto::ModelShape& model,
                     const proto::ModelShape& given,
                     const proto::DataSpec& data, const std::string& prefix,
                     Problems& problems);

}  // namespace sheaf

#endif  // SHEAF_CORE_SPEC_SECTIONS_H_
