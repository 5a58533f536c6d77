#include "core/safetensors.h"

#include <unistd.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace fs = std::filesystem;

// A fresh directory per test under Bazel's TEST_TMPDIR.
std::string TestDir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  const fs::path dir = fs::path(::testing::TempDir()) /
                       (std::string(info->test_suite_name()) + "." +
                        info->name());
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

void WriteFile(const std::string& path, std::string_view bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A file built byte by byte, independent of SafetensorsWriter: an 8-byte
// little-endian length, `header` verbatim, then `data`.
std::string RawFile(std::string_view header, std::string_view data,
                    uint64_t header_len) {
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) {
    out[static_cast<size_t>(i)] = static_cast<char>((header_len >> (8 * i)) & 0xFF);
  }
  out.append(header);
  out.append(data);
  return out;
}
std::string RawFile(std::string_view header, std::string_view data) {
  return RawFile(header, data, header.size());
}

template <typename T>
std::string BytesOf(const std::vector<T>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()),
                     v.size() * sizeof(T));
}

// Writes `contents` to a file and opens it, expecting `code`; returns the
// message, which must also name the file.
std::string OpenError(std::string_view contents, absl::StatusCode code) {
  const std::string path = TestDir() + "/bad.safetensors";
  WriteFile(path, contents);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open(path);
  EXPECT_FALSE(f.ok());
  if (f.ok()) return "";
  EXPECT_EQ(f.status().code(), code) << f.status();
  EXPECT_THAT(f.status().message(), HasSubstr(path));
  return std::string(f.status().message());
}

std::unique_ptr<SafetensorsFile> MustOpen(const std::string& path) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open(path);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *std::move(f) : nullptr;
}

// ---------------------------------------------------------------------------
// Conversions

TEST(SafetensorsConvert, Bf16RoundsToNearestEven) {
  EXPECT_EQ(F32ToBf16(1.0f), 0x3F80);
  EXPECT_EQ(Bf16ToF32(0x3F80), 1.0f);
  // bf16 keeps 7 mantissa bits: the ulp at 1 is 2^-7.
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 0x1p-8f)), 1.0f);  // tie -> even (down)
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 3 * 0x1p-8f)),
            1.0f + 0x1p-6f);                                  // tie -> even (up)
  EXPECT_EQ(Bf16ToF32(F32ToBf16(1.0f + 0x1p-8f + 0x1p-20f)),
            1.0f + 0x1p-7f);                                  // above tie: up
  EXPECT_EQ(Bf16ToF32(F32ToBf16(-2.5f)), -2.5f);
  EXPECT_TRUE(std::isinf(Bf16ToF32(
      F32ToBf16(std::numeric_limits<float>::max()))));  // overflow -> inf
  EXPECT_EQ(Bf16ToF32(F32ToBf16(std::numeric_limits<float>::infinity())),
            std::numeric_limits<float>::infinity());
  // A NaN whose payload sits only in the low bits must stay NaN.
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::bit_cast<float>(0x7F800001u)))));
  EXPECT_TRUE(std::isnan(Bf16ToF32(F32ToBf16(std::nanf("")))));
}

#if defined(__FLT16_MAX__)
// The branch-free fp16 code against the compiler's _Float16 conversions.
TEST(SafetensorsConvert, F16MatchesCompilerOnAllInputs) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float ours = F16ToF32(static_cast<uint16_t>(h));
    const float ref =
        static_cast<float>(std::bit_cast<_Float16>(static_cast<uint16_t>(h)));
    if (std::isnan(ref)) {
      ASSERT_TRUE(std::isnan(ours)) << h;
      continue;
    }
    ASSERT_EQ(std::bit_cast<uint32_t>(ours), std::bit_cast<uint32_t>(ref)) << h;
    ASSERT_EQ(F32ToF16(ours), h);  // exact values survive the round trip
  }
  std::mt19937 rng(7);
  std::vector<float> cases = {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f,
                              1e-8f, 2.98e-8f, 5.96e-8f, 6.1e-5f,
                              std::numeric_limits<float>::infinity(),
                              std::numeric_limits<float>::max()};
  for (int i = 0; i < 200000; ++i) {
    // Random bit patterns cover every exponent, including the fp16 boundary.
    cases.push_back(std::bit_cast<float>(static_cast<uint32_t>(rng())));
  }
  for (float f : cases) {
    const uint16_t ref = std::bit_cast<uint16_t>(static_cast<_Float16>(f));
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(F16ToF32(F32ToF16(f))));
      continue;
    }
    ASSERT_EQ(F32ToF16(f), ref) << f;
  }
}
#endif

// ---------------------------------------------------------------------------
// Writer/reader round trips

TEST(SafetensorsRoundTrip, F32WithMetadataScalarAndEmpty) {
  const std::string path = TestDir() + "/m.safetensors";
  const std::vector<float> w = {1.5f, -2.0f, 3.25f, 1e-30f, 7.0f, -0.0f};
  const std::vector<float> bias = {0.5f};
  const std::vector<int64_t> w_shape = {2, 3}, bias_shape = {},
                             empty_shape = {0, 4};
  SafetensorsWriter writer;
  writer.Add("layers.0.w", w_shape, w.data());
  writer.Add("empty", empty_shape, nullptr);
  writer.Add("bias", bias_shape, bias.data());
  ASSERT_TRUE(writer.Write(path, {{"format", "pt"}, {"step", "12"}}).ok());

  // Layout: 8-byte length, header padded to a multiple of 8, then data.
  const std::string bytes = ReadFile(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + (w.size() + bias.size()) * 4);
  EXPECT_EQ(bytes.substr(8 + n, w.size() * 4), BytesOf(w));
  // No temp file left behind.
  EXPECT_EQ(std::distance(fs::directory_iterator(fs::path(path).parent_path()),
                          fs::directory_iterator()),
            1);

  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "layers.0.w");  // order added
  EXPECT_EQ(f->tensors()[1].name, "empty");
  EXPECT_EQ(f->tensors()[2].name, "bias");
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("step"), "12");

  const TensorInfo* info = f->Find("layers.0.w");
  ASSERT_NE(info, nullptr);
  EXPECT_EQ(info->dtype, SafetensorsDtype::kDtypeF32);
  EXPECT_THAT(info->shape, ElementsAre(2, 3));
  EXPECT_EQ(info->numel(), 6);
  EXPECT_EQ(f->Bytes(*info).size(), 24u);
  std::vector<float> got(6);
  ASSERT_TRUE(f->ReadF32("layers.0.w", w_shape, got.data()).ok());
  for (size_t i = 0; i < w.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(w[i]));
  }
  float b = 0;
  ASSERT_TRUE(f->ReadF32("bias", bias_shape, &b).ok());
  EXPECT_EQ(b, 0.5f);
  EXPECT_EQ(f->Find("empty")->numel(), 0);
  EXPECT_TRUE(f->ReadF32("empty", empty_shape, nullptr).ok());
  EXPECT_EQ(f->Find("nope"), nullptr);

  // Elements [2, 5) only.
  std::vector<float> part(3);
  ASSERT_TRUE(f->ReadF32Range("layers.0.w", 2, 3, part.data()).ok());
  EXPECT_THAT(part, ElementsAre(3.25f, 1e-30f, 7.0f));
}

TEST(SafetensorsRoundTrip, Bf16AndF16) {
  const std::string path = TestDir() + "/h.safetensors";
  const std::vector<float> v = {1.0f, 1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f,
                                -3.140625f, 1e5f};
  const std::vector<int64_t> shape = {5};
  SafetensorsWriter writer;
  writer.Add("bf", shape, v.data(), SafetensorsDtype::kDtypeBF16);
  writer.Add("h", shape, v.data(), SafetensorsDtype::kDtypeF16);
  ASSERT_TRUE(writer.Write(path).ok());
  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  EXPECT_TRUE(f->metadata().empty());
  EXPECT_EQ(f->Find("bf")->dtype, SafetensorsDtype::kDtypeBF16);
  EXPECT_EQ(f->Find("bf")->bytes(), 10);
  std::vector<float> got(5);
  ASSERT_TRUE(f->ReadF32("bf", shape, got.data()).ok());
  EXPECT_THAT(got, ElementsAre(1.0f, 1.0f, 1.0f + 0x1p-6f, -3.140625f,
                               Bf16ToF32(F32ToBf16(1e5f))));
  ASSERT_TRUE(f->ReadF32("h", shape, got.data()).ok());
  EXPECT_EQ(got[0], 1.0f);
  EXPECT_EQ(got[1], 1.0f + 0x1p-8f);  // fp16 has 10 mantissa bits: exact
  EXPECT_EQ(got[3], -3.140625f);
  EXPECT_TRUE(std::isinf(got[4]));    // 1e5 > fp16 max 65504
}

// Reads into storage of a dtype: bf16 storage copies BF16 bytes unchanged
// (the same bits the file holds; no widening), never narrows another dtype,
// and f32 storage converts as ReadF32 does.
TEST(SafetensorsRead, ByStorageDtype) {
  const std::string path = TestDir() + "/d.safetensors";
  const std::vector<float> v = {1.0f, -2.5f, 3.0f + 0x1p-6f, 0.125f, -7.0f, 1e-3f};
  const std::vector<int64_t> shape = {2, 3};
  SafetensorsWriter writer;
  writer.Add("bf", shape, v.data(), SafetensorsDtype::kDtypeBF16);
  writer.Add("f", shape, v.data());
  ASSERT_TRUE(writer.Write(path).ok());
  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  std::vector<uint16_t> bits(6, 0xdead);
  ASSERT_TRUE(f->Read("bf", shape, DType::kDTypeBF16, bits.data()).ok());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(bits[i], F32ToBf16(v[i])) << i;
  std::vector<uint16_t> part(3, 0xdead);
  ASSERT_TRUE(f->ReadRange("bf", 2, 3, DType::kDTypeBF16, part.data()).ok());
  EXPECT_THAT(part, ElementsAre(bits[2], bits[3], bits[4]));
  std::vector<float> wide(6);
  ASSERT_TRUE(f->Read("bf", shape, DType::kDTypeF32, wide.data()).ok());
  for (size_t i = 0; i < v.size(); ++i) EXPECT_EQ(wide[i], Bf16ToF32(bits[i])) << i;

  const absl::Status narrow = f->Read("f", shape, DType::kDTypeBF16, bits.data());
  EXPECT_EQ(narrow.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(narrow.message(), HasSubstr("'f'"));
  EXPECT_THAT(narrow.message(), HasSubstr("F32"));
  const std::vector<int64_t> wrong = {3, 2};
  EXPECT_EQ(f->Read("bf", wrong, DType::kDTypeBF16, bits.data()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f->ReadRange("bf", 4, 3, DType::kDTypeBF16, part.data()).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(f->Read("bf", shape, DType::kDTypeNF4, bits.data()).code(),
            absl::StatusCode::kUnimplemented);
  EXPECT_EQ(f->Read("nope", shape, DType::kDTypeBF16, bits.data()).code(),
            absl::StatusCode::kNotFound);
  std::unique_ptr<SafetensorsModel> m = SafetensorsModel::Open(path).value();
  std::vector<uint16_t> again(6);
  ASSERT_TRUE(m->Read("bf", shape, DType::kDTypeBF16, again.data()).ok());
  EXPECT_EQ(again, bits);
}

TEST(SafetensorsWriter, RejectsBadInput) {
  const std::string dir = TestDir();
  const std::vector<float> v = {1.0f};
  const std::vector<int64_t> one = {1}, negative = {-1};
  {
    SafetensorsWriter w;
    w.Add("a", one, v.data());
    w.Add("a", one, v.data());
    EXPECT_THAT(w.Write(dir + "/x").message(), HasSubstr("'a'"));
  }
  {
    SafetensorsWriter w;
    w.Add("__metadata__", one, v.data());
    EXPECT_THAT(w.Write(dir + "/x").message(), HasSubstr("reserved"));
  }
  {
    SafetensorsWriter w;
    w.Add("a", negative, v.data());
    EXPECT_THAT(w.Write(dir + "/x").message(), HasSubstr("invalid shape [-1]"));
  }
  {
    SafetensorsWriter w;
    w.Add("a", one, nullptr);
    EXPECT_THAT(w.Write(dir + "/x").message(), HasSubstr("null"));
  }
  {
    SafetensorsWriter w;
    w.Add("a", one, v.data(), SafetensorsDtype::kDtypeI32);
    EXPECT_THAT(w.Write(dir + "/x").message(), HasSubstr("as I32"));
  }
  {
    SafetensorsWriter w;
    w.Add("a", one, v.data());
    const absl::Status s = w.Write(dir + "/no/such/dir/x.safetensors");
    EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
    EXPECT_THAT(s.message(), HasSubstr("no/such/dir"));
  }
  EXPECT_FALSE(fs::exists(dir + "/x"));
}

TEST(SafetensorsWriter, ReplacesExistingFileAtomically) {
  const std::string path = TestDir() + "/m.safetensors";
  WriteFile(path, "old contents");
  const std::vector<float> v = {4.0f};
  const std::vector<int64_t> one = {1};
  SafetensorsWriter w;
  w.Add("a", one, v.data());
  ASSERT_TRUE(w.Write(path).ok());
  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  float got = 0;
  ASSERT_TRUE(f->ReadF32("a", one, &got).ok());
  EXPECT_EQ(got, 4.0f);
}

// ---------------------------------------------------------------------------
// Reading hand-built files

TEST(SafetensorsRead, OtherDtypesAndUnalignedData) {
  // A 5-byte-long header leaves the data unaligned: reads must not care.
  const std::string header =
      R"({"d":{"dtype":"F64","shape":[2],"data_offsets":[0,16]},)"
      R"("h":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},)"
      R"("b":{"dtype":"BF16","shape":[1],"data_offsets":[20,22]},)"
      R"("i":{"dtype":"I64","shape":[1],"data_offsets":[22,30]},)"
      R"("m":{"dtype":"BOOL","shape":[2],"data_offsets":[30,32]}})";
  std::string data = BytesOf(std::vector<double>{0.25, -1e10});
  data += BytesOf(std::vector<uint16_t>{0x3C00, 0xC000});  // fp16 1, -2
  data += BytesOf(std::vector<uint16_t>{0x4040});          // bf16 3
  data += BytesOf(std::vector<int64_t>{42});
  data += std::string("\x01\x00", 2);
  const std::string path = TestDir() + "/t.safetensors";
  WriteFile(path, RawFile(header + "     ", data));
  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  const std::vector<int64_t> two = {2}, one = {1};
  std::vector<float> got(2);
  ASSERT_TRUE(f->ReadF32("d", two, got.data()).ok());
  EXPECT_THAT(got, ElementsAre(0.25f, -1e10f));
  ASSERT_TRUE(f->ReadF32("h", two, got.data()).ok());
  EXPECT_THAT(got, ElementsAre(1.0f, -2.0f));
  ASSERT_TRUE(f->ReadF32("b", one, got.data()).ok());
  EXPECT_EQ(got[0], 3.0f);
  int64_t i64;
  std::memcpy(&i64, f->Bytes(*f->Find("i")).data(), 8);
  EXPECT_EQ(i64, 42);
  EXPECT_EQ(f->Find("m")->dtype, SafetensorsDtype::kDtypeBool);

  const absl::Status not_float = f->ReadF32("i", one, got.data());
  EXPECT_EQ(not_float.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(not_float.message(),
              AllOf(HasSubstr("'i'"), HasSubstr("dtype I64")));
}

TEST(SafetensorsRead, ReadErrorsNameTheTensor) {
  const std::string path = TestDir() + "/m.safetensors";
  const std::vector<float> v(6, 1.0f);
  const std::vector<int64_t> shape = {2, 3}, transposed = {3, 2};
  SafetensorsWriter w;
  w.Add("proj.weight", shape, v.data());
  ASSERT_TRUE(w.Write(path).ok());
  std::unique_ptr<SafetensorsFile> f = MustOpen(path);
  ASSERT_NE(f, nullptr);
  std::vector<float> out(6);

  const absl::Status missing = f->ReadF32("proj.bias", shape, out.data());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("'proj.bias'"));

  const absl::Status mismatch = f->ReadF32("proj.weight", transposed,
                                           out.data());
  EXPECT_EQ(mismatch.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mismatch.message(),
              AllOf(HasSubstr("'proj.weight'"), HasSubstr("shape [2, 3]"),
                    HasSubstr("expected [3, 2]"), HasSubstr(path)));

  for (auto [first, count] : std::vector<std::pair<int64_t, int64_t>>{
           {-1, 1}, {0, 7}, {6, 1}, {2, -1},
           {1, std::numeric_limits<int64_t>::max()}}) {
    const absl::Status range =
        f->ReadF32Range("proj.weight", first, count, out.data());
    EXPECT_EQ(range.code(), absl::StatusCode::kOutOfRange) << first;
    EXPECT_THAT(range.message(), HasSubstr("6 elements"));
  }
  EXPECT_TRUE(f->ReadF32Range("proj.weight", 6, 0, out.data()).ok());
}

// One test per structural error, each with its message.
TEST(SafetensorsOpenErrors, Truncated) {
  EXPECT_THAT(OpenError("", absl::StatusCode::kDataLoss),
              HasSubstr("truncated: 0 bytes"));
  EXPECT_THAT(OpenError("12345", absl::StatusCode::kDataLoss),
              HasSubstr("truncated"));
}

TEST(SafetensorsOpenErrors, HeaderLengthPastEnd) {
  EXPECT_THAT(OpenError(RawFile("{}", "", 100), absl::StatusCode::kDataLoss),
              AllOf(HasSubstr("header length 100"), HasSubstr("past the end"),
                    HasSubstr("10 bytes")));
}

TEST(SafetensorsOpenErrors, HeaderTooLarge) {
  EXPECT_THAT(OpenError(RawFile("{}", "", uint64_t{1} << 40),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("exceeds the limit"));
  // Bytes that are not a safetensors file at all read as a huge length.
  EXPECT_THAT(OpenError("PK\x03\x04 this is a zip",
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("not a safetensors file?"));
}

TEST(SafetensorsOpenErrors, InvalidJson) {
  EXPECT_THAT(OpenError(RawFile(R"({"a": )", ""),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("header is not valid JSON"),
                    HasSubstr("line 1, column 7")));
  EXPECT_THAT(OpenError(RawFile("[1]", ""), absl::StatusCode::kInvalidArgument),
              HasSubstr("header is a JSON array, expected an object"));
}

TEST(SafetensorsOpenErrors, BadMetadata) {
  EXPECT_THAT(OpenError(RawFile(R"({"__metadata__":{"k":1}})", ""),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("__metadata__ value for 'k' is a number"));
  EXPECT_THAT(OpenError(RawFile(R"({"__metadata__":[]})", ""),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("__metadata__ is a array"));
}

TEST(SafetensorsOpenErrors, UnknownDtype) {
  EXPECT_THAT(
      OpenError(RawFile(R"({"w":{"dtype":"F8_E4M3","shape":[1],)"
                        R"("data_offsets":[0,1]}})",
                        "x"),
                absl::StatusCode::kInvalidArgument),
      AllOf(HasSubstr("tensor 'w'"), HasSubstr("unknown dtype 'F8_E4M3'")));
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"shape":[1],"data_offsets":[0,1]}})",
                                "x"),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("tensor 'w': missing string field \"dtype\""));
  EXPECT_THAT(OpenError(RawFile(R"({"w":7})", ""),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("tensor 'w': entry is a number"));
}

TEST(SafetensorsOpenErrors, BadShape) {
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[2,-1],)"
                                R"("data_offsets":[0,0]}})",
                                ""),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("tensor 'w'"),
                    HasSubstr("negative dimension shape[1] = -1")));
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[1.5],)"
                                R"("data_offsets":[0,0]}})",
                                ""),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("shape[0] is 1.5, expected an integer"));
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","data_offsets":[0,0]}})",
                                ""),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("missing array field \"shape\""));
  EXPECT_THAT(
      OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],)"
                        R"("data_offsets":[0,0]}})",
                        ""),
                absl::StatusCode::kInvalidArgument),
      HasSubstr("more than 2^63 elements"));
}

TEST(SafetensorsOpenErrors, DataOffsetsNotTwoInts) {
  for (const char* offsets : {"[0]", "[0,1,2]", "[0,\"1\"]", "[0,1.5]", "7"}) {
    EXPECT_THAT(
        OpenError(RawFile(absl::StrCat(R"({"w":{"dtype":"U8","shape":[1],)",
                                       R"("data_offsets":)", offsets, "}}"),
                          "x"),
                  absl::StatusCode::kInvalidArgument),
        AllOf(HasSubstr("tensor 'w'"),
              HasSubstr("data_offsets must be two integers")))
        << offsets;
  }
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[1]}})", "x"),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("got nothing"));
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[1],)"
                                R"("data_offsets":[-1,0]}})",
                                "x"),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("negative data_offsets"));
}

TEST(SafetensorsOpenErrors, BeginAfterEnd) {
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"U8","shape":[0],)"
                                R"("data_offsets":[4,2]}})",
                                "abcd"),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("begin 4 > end 2")));
}

TEST(SafetensorsOpenErrors, EndPastBuffer) {
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"F32","shape":[2],)"
                                R"("data_offsets":[0,8]}})",
                                "abcd"),
                        absl::StatusCode::kDataLoss),
              AllOf(HasSubstr("tensor 'w'"),
                    HasSubstr("end 8 is past the end of the data buffer "
                              "(4 bytes)"),
                    HasSubstr("truncated")));
}

TEST(SafetensorsOpenErrors, LengthMismatch) {
  EXPECT_THAT(OpenError(RawFile(R"({"w":{"dtype":"F32","shape":[3],)"
                                R"("data_offsets":[0,8]}})",
                                "abcdefgh"),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("tensor 'w'"), HasSubstr("byte length 8"),
                    HasSubstr("3 elements (shape [3]) * 4 bytes of F32")));
}

TEST(SafetensorsOpenErrors, Overlap) {
  EXPECT_THAT(OpenError(RawFile(R"({"a":{"dtype":"F32","shape":[2],)"
                                R"("data_offsets":[0,8]},)"
                                R"("b":{"dtype":"F32","shape":[2],)"
                                R"("data_offsets":[4,12]}})",
                                std::string(12, 'x')),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("'a' [0, 8)"), HasSubstr("'b' [4, 12)"),
                    HasSubstr("overlap")));
  // The same range twice is an overlap too (header order does not matter).
  EXPECT_THAT(OpenError(RawFile(R"({"b":{"dtype":"U8","shape":[4],)"
                                R"("data_offsets":[0,4]},)"
                                R"("a":{"dtype":"U8","shape":[4],)"
                                R"("data_offsets":[0,4]}})",
                                "abcd"),
                        absl::StatusCode::kInvalidArgument),
              HasSubstr("overlap"));
}

TEST(SafetensorsOpenErrors, Holes) {
  EXPECT_THAT(OpenError(RawFile(R"({"a":{"dtype":"U8","shape":[4],)"
                                R"("data_offsets":[0,4]},)"
                                R"("b":{"dtype":"U8","shape":[4],)"
                                R"("data_offsets":[8,12]}})",
                                std::string(12, 'x')),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("hole"), HasSubstr("bytes [4, 8)")));
  EXPECT_THAT(OpenError(RawFile(R"({"a":{"dtype":"U8","shape":[4],)"
                                R"("data_offsets":[0,4]}})",
                                std::string(6, 'x')),
                        absl::StatusCode::kInvalidArgument),
              AllOf(HasSubstr("hole"), HasSubstr("bytes [4, 6) after the last")));
  EXPECT_THAT(OpenError(RawFile("{}", "zz"), absl::StatusCode::kInvalidArgument),
              HasSubstr("bytes [0, 2)"));
}

TEST(SafetensorsOpenErrors, EmptyTensorsMayTouchOthers) {
  const std::string path = TestDir() + "/e.safetensors";
  WriteFile(path, RawFile(R"({"a":{"dtype":"U8","shape":[4],)"
                          R"("data_offsets":[0,4]},)"
                          R"("e1":{"dtype":"F32","shape":[0],)"
                          R"("data_offsets":[4,4]},)"
                          R"("e0":{"dtype":"F32","shape":[0,5],)"
                          R"("data_offsets":[0,0]}})",
                          "abcd"));
  EXPECT_NE(MustOpen(path), nullptr);
  WriteFile(path, "\0\0\0\0\0\0\0\0");  // header length 0: "" is not JSON
  EXPECT_FALSE(SafetensorsFile::Open(path).ok());
  WriteFile(path, RawFile("{}", ""));  // no tensors at all: valid
  EXPECT_NE(MustOpen(path), nullptr);
}

TEST(SafetensorsOpenErrors, MissingFileAndDirectory) {
  const std::string dir = TestDir();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
      SafetensorsFile::Open(dir + "/absent.safetensors");
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(f.status().message(), HasSubstr("absent.safetensors"));
  f = SafetensorsFile::Open(dir);
  EXPECT_EQ(f.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(f.status().message(), HasSubstr("not a regular file"));
}

// Every prefix of a valid file, and every byte of it overwritten with a few
// troublesome values: Open and ReadF32 return errors or succeed, never crash.
TEST(SafetensorsFuzz, TruncationsAndByteFlips) {
  const std::string dir = TestDir();
  const std::string good_path = dir + "/good.safetensors";
  const std::vector<float> v = {1.0f, 2.0f, 3.0f, 4.0f, 5.0f, 6.0f};
  const std::vector<int64_t> s23 = {2, 3}, s3 = {3}, s0 = {0};
  SafetensorsWriter w;
  w.Add("a", s23, v.data());
  w.Add("b", s3, v.data(), SafetensorsDtype::kDtypeBF16);
  w.Add("z", s0, nullptr);
  ASSERT_TRUE(w.Write(good_path, {{"k", "v"}}).ok());
  const std::string good = ReadFile(good_path);

  std::vector<float> out(64);
  const auto exercise = [&](const std::string& contents) -> bool {
    const std::string path = dir + "/fuzz.safetensors";
    WriteFile(path, contents);
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f =
        SafetensorsFile::Open(path);
    if (!f.ok()) return false;
    for (const TensorInfo& t : (*f)->tensors()) {
      if (t.numel() > static_cast<int64_t>(out.size())) continue;
      (void)(*f)->ReadF32(t.name, t.shape, out.data());
      (void)(*f)->ReadF32Range(t.name, 0, t.numel(), out.data());
    }
    return true;
  };
  int opened = 0;
  for (size_t len = 0; len <= good.size(); ++len) {
    opened += exercise(good.substr(0, len));
  }
  // Only the complete file tiles its buffer.
  EXPECT_EQ(opened, 1);
  // Data bytes cannot change validity, so flip only the length and header.
  uint64_t header_len;
  std::memcpy(&header_len, good.data(), 8);
  for (size_t i = 0; i < 8 + header_len; ++i) {
    for (char c : {'\0', '\xFF', '"', '9', '-'}) {
      std::string mutated = good;
      mutated[i] = c;
      exercise(mutated);
    }
  }
}

// ---------------------------------------------------------------------------
// Model directories

void WriteShard(const std::string& path,
                const std::vector<std::pair<std::string, std::vector<float>>>&
                    tensors) {
  SafetensorsWriter w;
  std::vector<std::vector<int64_t>> shapes;
  shapes.reserve(tensors.size());
  for (const auto& [name, values] : tensors) {
    shapes.push_back({static_cast<int64_t>(values.size())});
    w.Add(name, shapes.back(), values.data());
  }
  ASSERT_TRUE(w.Write(path).ok());
}

TEST(SafetensorsModel, SingleFileDirectoryAndPlainFile) {
  const std::string dir = TestDir();
  WriteShard(dir + "/model.safetensors", {{"x", {1, 2}}});
  for (const std::string& path : {dir, dir + "/model.safetensors"}) {
    absl::StatusOr<std::unique_ptr<SafetensorsModel>> m =
        SafetensorsModel::Open(path);
    ASSERT_TRUE(m.ok()) << m.status();
    std::vector<float> got(2);
    const std::vector<int64_t> shape = {2};
    ASSERT_TRUE((*m)->ReadF32("x", shape, got.data()).ok());
    EXPECT_THAT(got, ElementsAre(1.0f, 2.0f));
  }
}

TEST(SafetensorsModel, ShardedIndex) {
  const std::string dir = TestDir();
  WriteShard(dir + "/model-00001-of-00002.safetensors",
             {{"embed", {1, 2, 3}}, {"layer.0", {4, 5}}});
  WriteShard(dir + "/model-00002-of-00002.safetensors",
             {{"layer.1", {6, 7, 8, 9}}, {"extra", {0}}});
  WriteFile(dir + "/model.safetensors.index.json", R"({
    "metadata": {"total_size": 40},
    "weight_map": {
      "layer.1": "model-00002-of-00002.safetensors",
      "embed": "model-00001-of-00002.safetensors",
      "layer.0": "model-00001-of-00002.safetensors"
    }
  })");
  absl::StatusOr<std::unique_ptr<SafetensorsModel>> m =
      SafetensorsModel::Open(dir);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ((*m)->files().size(), 2u);
  // Shards in first-mention order; tensors the index omits are still found.
  EXPECT_THAT((*m)->files()[0]->path(), HasSubstr("00002-of"));
  EXPECT_EQ((*m)->tensors().size(), 4u);
  ASSERT_NE((*m)->Find("extra"), nullptr);
  EXPECT_EQ((*m)->Find("layer.1")->numel(), 4);
  EXPECT_EQ((*m)->FileFor("embed"), (*m)->files()[1].get());
  std::vector<float> got(4);
  const std::vector<int64_t> four = {4}, three = {3};
  ASSERT_TRUE((*m)->ReadF32("layer.1", four, got.data()).ok());
  EXPECT_THAT(got, ElementsAre(6, 7, 8, 9));
  ASSERT_TRUE((*m)->ReadF32("embed", three, got.data()).ok());
  EXPECT_THAT(std::vector<float>(got.begin(), got.begin() + 3),
              ElementsAre(1, 2, 3));
  ASSERT_TRUE((*m)->ReadF32Range("layer.1", 1, 2, got.data()).ok());
  EXPECT_EQ(got[0], 7);
  EXPECT_EQ(got[1], 8);
  const absl::Status missing = (*m)->ReadF32("nope", four, got.data());
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("'nope'"));
  EXPECT_EQ((*m)->ReadF32Range("nope", 0, 1, got.data()).code(),
            absl::StatusCode::kNotFound);
  // Errors from a shard name the shard.
  EXPECT_THAT((*m)->ReadF32("embed", four, got.data()).message(),
              HasSubstr("00001-of"));
}

TEST(SafetensorsModel, IndexErrors) {
  const std::string dir = TestDir();
  WriteShard(dir + "/a.safetensors", {{"x", {1}}});
  WriteShard(dir + "/b.safetensors", {{"y", {2}}, {"x", {3}}});
  const std::string index = dir + "/model.safetensors.index.json";
  const auto open_error = [&](std::string_view text) {
    WriteFile(index, text);
    absl::StatusOr<std::unique_ptr<SafetensorsModel>> m =
        SafetensorsModel::Open(dir);
    EXPECT_FALSE(m.ok());
    return m.ok() ? absl::OkStatus() : m.status();
  };
  absl::Status s = open_error(R"({"weight_map": {"x": "a.safetensors",)"
                              R"( "y": "b.safetensors"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'x' is in both"),
                                 HasSubstr("a.safetensors"),
                                 HasSubstr("b.safetensors")));
  s = open_error(R"({"weight_map": {"y": "a.safetensors"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(s.message(), HasSubstr("puts tensor 'y' in a.safetensors"));
  s = open_error(R"({"weight_map": {"x": "../a.safetensors"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("relative path inside the directory"));
  s = open_error(R"({"weight_map": {"x": "/etc/passwd"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  s = open_error(R"({"weight_map": {"x": 3}})");
  EXPECT_THAT(s.message(), HasSubstr("weight_map['x'] is a number"));
  s = open_error(R"({"metadata": {}})");
  EXPECT_THAT(s.message(), HasSubstr("missing object field \"weight_map\""));
  s = open_error("{");
  EXPECT_THAT(s.message(), AllOf(HasSubstr(index), HasSubstr("line 1")));
  s = open_error(R"({"weight_map": {"x": "missing.safetensors"}})");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("missing.safetensors"));

  absl::StatusOr<std::unique_ptr<SafetensorsModel>> m =
      SafetensorsModel::Open(dir + "/nowhere");
  EXPECT_EQ(m.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(m.status().message(), HasSubstr("no model.safetensors"));
}

}  // namespace
}  // namespace sheaf
