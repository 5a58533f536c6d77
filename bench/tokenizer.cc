// Tokenizer throughput: `tokenizer TOKENIZER.json TEXT_FILE [REPEATS]`
// encodes the text REPEATS times on one thread and prints machine-readable
// lines (name value unit), with the byte tokenizer on the same text as the
// in-process reference (so the figure is also a ratio):
//   bpe_encode_mb_per_s 7.1 MB/s
//   byte_encode_mb_per_s 900 MB/s
//   bpe_tokens_per_byte 0.31 tokens/B
// tools/experiments/tokenizer_bench.sh makes a tokenizer and a text and runs it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "core/data/bpe_tokenizer.h"

int main(int argc, char** argv) {
  using namespace sheaf;
  if (argc < 3) {
    std::fprintf(stderr, "usage: tokenizer TOKENIZER.json TEXT_FILE [REPEATS]\n");
    return 2;
  }
  const int repeats = argc > 3 ? std::atoi(argv[3]) : 5;
  auto bpe = BpeTokenizer::Load(argv[1]);
  if (!bpe.ok()) {
    std::fprintf(stderr, "error: %s\n", std::string(bpe.status().message()).c_str());
    return 2;
  }
  std::ifstream in(argv[2], std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string text = ss.str();
  auto time_it = [&](const Tokenizer& t, size_t* tokens) {
    const auto start = std::chrono::steady_clock::now();
    for (int r = 0; r < repeats; ++r) *tokens = t.Encode(text).size();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return static_cast<double>(text.size()) * repeats / s / 1e6;
  };
  size_t bpe_tokens = 0, byte_tokens = 0;
  ByteTokenizer bytes;
  const double bpe_mb = time_it(**bpe, &bpe_tokens);
  const double byte_mb = time_it(bytes, &byte_tokens);
  std::printf("bpe_encode_mb_per_s %.2f MB/s\n", bpe_mb);
  std::printf("byte_encode_mb_per_s %.1f MB/s\n", byte_mb);
  std::printf("bpe_tokens_per_byte %.3f tokens/B\n",
              static_cast<double>(bpe_tokens) / static_cast<double>(text.size()));
  std::printf("text_bytes %zu B\n", text.size());
  return 0;
}
