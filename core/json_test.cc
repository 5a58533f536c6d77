#include "core/json.h"

#include <cstdint>
#include <limits>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sheaf {
namespace {

using ::testing::HasSubstr;

Json MustParse(std::string_view text) {
  absl::StatusOr<Json> j = Json::Parse(text);
  EXPECT_TRUE(j.ok()) << text << ": " << j.status();
  return j.ok() ? *std::move(j) : Json();
}

// Parses `text`, expecting failure; returns the message.
std::string ParseError(std::string_view text) {
  absl::StatusOr<Json> j = Json::Parse(text);
  EXPECT_FALSE(j.ok()) << "parsed: " << text;
  if (j.ok()) return "";
  EXPECT_EQ(j.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(j.status().message());
}

TEST(JsonParse, Scalars) {
  EXPECT_TRUE(MustParse("null").is_null());
  EXPECT_TRUE(MustParse(" true ").as_bool());
  EXPECT_FALSE(MustParse("false").as_bool());
  EXPECT_EQ(MustParse("\"hi\"").as_string(), "hi");
  EXPECT_EQ(MustParse("42").as_int64(), 42);
  EXPECT_EQ(MustParse("\t\r\n 7 \n").as_int64(), 7);
}

TEST(JsonParse, ObjectKeepsInsertionOrderAndFinds) {
  const Json j = MustParse(R"({"z": 1, "a": [true, null], "m": {"x": "y"}})");
  ASSERT_TRUE(j.is_object());
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j.items()[0].first, "z");
  EXPECT_EQ(j.items()[1].first, "a");
  EXPECT_EQ(j.items()[2].first, "m");
  ASSERT_NE(j.Find("a"), nullptr);
  EXPECT_TRUE((*j.Find("a"))[0].as_bool());
  EXPECT_TRUE((*j.Find("a"))[1].is_null());
  EXPECT_EQ(j.Find("m")->Find("x")->as_string(), "y");
  EXPECT_EQ(j.Find("nope"), nullptr);
  EXPECT_EQ(MustParse("[1]").Find("a"), nullptr);  // not an object: no crash
}

TEST(JsonNumbers, IntegersStayExact) {
  const Json max = MustParse("9223372036854775807");
  EXPECT_TRUE(max.is_int64());
  EXPECT_EQ(max.as_int64(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(max.Dump(), "9223372036854775807");
  const Json min = MustParse("-9223372036854775808");
  EXPECT_EQ(min.as_int64(), std::numeric_limits<int64_t>::min());
  // One past int64 max: kept as a double, no longer an exact int.
  const Json big = MustParse("9223372036854775808");
  EXPECT_FALSE(big.is_int64());
  EXPECT_DOUBLE_EQ(big.as_double(), 9223372036854775808.0);
  // Neighbours that a double would merge stay distinct.
  EXPECT_FALSE(MustParse("9007199254740993") == MustParse("9007199254740992"));
}

TEST(JsonNumbers, FractionsAndExponents) {
  EXPECT_DOUBLE_EQ(MustParse("1e-5").as_double(), 1e-5);
  EXPECT_DOUBLE_EQ(MustParse("-0.5").as_double(), -0.5);
  EXPECT_DOUBLE_EQ(MustParse("2.5E+3").as_double(), 2500.0);
  EXPECT_FALSE(MustParse("-0.5").is_int64());
  // Integral values written with an exponent still read as integers...
  EXPECT_TRUE(MustParse("1e3").is_int64());
  EXPECT_EQ(MustParse("1e3").as_int64(), 1000);
  // ...but print back as doubles, so a round trip keeps the kind.
  EXPECT_EQ(MustParse("2.0").Dump(), "2.0");
  EXPECT_EQ(MustParse("1e-5").Dump(), "1e-05");
  EXPECT_EQ(MustParse("-0.5").Dump(), "-0.5");
  // Underflow rounds to zero; overflow is an error (below).
  EXPECT_EQ(MustParse("1e-400").as_double(), 0.0);
  EXPECT_EQ(MustParse("0.1").as_double(), 0.1);
}

TEST(JsonNumbers, DumpIsRoundTrippable) {
  for (double d : {0.1, 1.0 / 3.0, 1e300, -2.5e-300, 123456789.125,
                   std::numeric_limits<double>::denorm_min()}) {
    const std::string text = Json(d).Dump();
    EXPECT_EQ(MustParse(text).as_double(), d) << text;
  }
  // Floats print their own shortest form, not the widened double's.
  EXPECT_EQ(Json(0.1f).Dump(), "0.1");
  EXPECT_EQ(static_cast<float>(MustParse(Json(0.1f).Dump()).as_double()), 0.1f);
  EXPECT_EQ(Json(3.0f).Dump(), "3.0");
  EXPECT_EQ(Json(std::numeric_limits<double>::quiet_NaN()).Dump(), "null");
  EXPECT_EQ(Json(std::numeric_limits<double>::infinity()).Dump(), "null");
  EXPECT_EQ(Json(uint64_t{18446744073709551615u}).Dump(),
            "1.8446744073709552e+19");
  EXPECT_EQ(Json(int64_t{-3}).Dump(), "-3");
  // Python repr layout: fixed for exponents in [-4, 16), else d.ddde+XX.
  EXPECT_EQ(Json(0.0003).Dump(), "0.0003");
  EXPECT_EQ(Json(1e-4).Dump(), "0.0001");
  EXPECT_EQ(Json(1.5e-7).Dump(), "1.5e-07");
  EXPECT_EQ(Json(1e15).Dump(), "1000000000000000.0");
  EXPECT_EQ(Json(1e16).Dump(), "1e+16");
  EXPECT_EQ(Json(123.456).Dump(), "123.456");
  EXPECT_EQ(Json(-0.0).Dump(), "-0.0");
  EXPECT_EQ(Json(0.0).Dump(), "0.0");
  EXPECT_EQ(Json(1e300).Dump(), "1e+300");
  EXPECT_EQ(Json(7u).as_int64(), 7);
}

TEST(JsonStrings, Escapes) {
  const Json j = MustParse(R"("a\"b\\c\/d\b\f\n\r\t\u0001")");
  EXPECT_EQ(j.as_string(), "a\"b\\c/d\b\f\n\r\t\x01");
  // Dump uses the short escapes and \u00XX for other control characters;
  // '/' needs no escape.
  EXPECT_EQ(j.Dump(), R"("a\"b\\c/d\b\f\n\r\t\u0001")");
}

TEST(JsonStrings, Unicode) {
  // \u escapes: BMP, and a surrogate pair for U+1F600.
  EXPECT_EQ(MustParse(R"("\u00e9\u4e2d\ud83d\ude00")").as_string(),
            "\xC3\xA9\xE4\xB8\xAD\xF0\x9F\x98\x80");
  // Raw UTF-8 passes through and dumps back raw.
  const std::string raw = "\"caf\xC3\xA9 \xF0\x9F\x98\x80\"";
  EXPECT_EQ(MustParse(raw).Dump(), raw);
  // Invalid UTF-8 built in code dumps as U+FFFD, so the output stays valid.
  EXPECT_EQ(Json(std::string("a\xFF" "b")).Dump(), R"("a\ufffdb")");
}

TEST(JsonRoundTrip, CompactAndIndented) {
  const std::string text =
      R"({"name":"x","shape":[2,3],"lr":0.0003,"ok":true,"none":null,)"
      R"("nested":{"empty_list":[],"empty_obj":{}}})";
  const Json j = MustParse(text);
  EXPECT_EQ(j.Dump(), text);
  const std::string pretty = j.Dump(2);
  EXPECT_EQ(pretty,
            "{\n"
            "  \"name\": \"x\",\n"
            "  \"shape\": [\n"
            "    2,\n"
            "    3\n"
            "  ],\n"
            "  \"lr\": 0.0003,\n"
            "  \"ok\": true,\n"
            "  \"none\": null,\n"
            "  \"nested\": {\n"
            "    \"empty_list\": [],\n"
            "    \"empty_obj\": {}\n"
            "  }\n"
            "}");
  EXPECT_EQ(MustParse(pretty), j);
  EXPECT_EQ(MustParse(pretty).Dump(), text);
}

TEST(JsonBuild, SetPushAndEquality) {
  Json j = Json::Object();
  j.Set("b", 1).Set("a", "two").Set("list", Json::Array().Push(1).Push(2.5));
  j.Set("b", 3);  // replaces in place, keeps position
  EXPECT_EQ(j.Dump(), R"({"b":3,"a":"two","list":[1,2.5]})");
  Json from_null;
  from_null.Set("k", nullptr);
  EXPECT_EQ(from_null.Dump(), R"({"k":null})");
  Json arr;
  arr.Push(true);
  EXPECT_EQ(arr.Dump(), "[true]");
  // Equality ignores member order and compares numbers by value.
  EXPECT_EQ(MustParse(R"({"a":1,"b":2.0})"), MustParse(R"({"b":2,"a":1.0})"));
  EXPECT_FALSE(MustParse("[1,2]") == MustParse("[2,1]"));
  EXPECT_FALSE(MustParse("1") == MustParse("\"1\""));
}

TEST(JsonGet, StatusHelpers) {
  const Json j = MustParse(R"({"s":"x","i":5,"d":0.5,"b":false})");
  EXPECT_EQ(*j.GetString("s"), "x");
  EXPECT_EQ(*j.GetInt64("i"), 5);
  EXPECT_EQ(*j.GetDouble("i"), 5.0);
  EXPECT_EQ(*j.GetDouble("d"), 0.5);
  EXPECT_EQ(*j.GetBool("b"), false);
  EXPECT_EQ(j.GetString("missing").status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_THAT(j.GetString("missing").status().message(), HasSubstr("missing"));
  EXPECT_THAT(j.GetString("i").status().message(),
              HasSubstr("field 'i': expected string, got number"));
  EXPECT_THAT(j.GetInt64("d").status().message(),
              HasSubstr("expected an integer, got 0.5"));
  EXPECT_EQ(MustParse("[]").Get("x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

// Every class of syntax error, with where it was found and what was expected.
TEST(JsonErrors, Messages) {
  EXPECT_THAT(ParseError(""),
              HasSubstr("line 1, column 1: expected a value, got end of input"));
  EXPECT_THAT(ParseError("   "), HasSubstr("column 4: expected a value"));
  EXPECT_THAT(ParseError("@"), HasSubstr("expected a value, got '@'"));
  EXPECT_THAT(ParseError("tru"), HasSubstr("invalid literal, expected 'true'"));
  EXPECT_THAT(ParseError("nul"), HasSubstr("expected 'null'"));
  EXPECT_THAT(ParseError("[1 2]"),
              HasSubstr("column 4: expected ',' or ']' in array, got '2'"));
  EXPECT_THAT(ParseError("[1,]"), HasSubstr("expected a value, got ']'"));
  EXPECT_THAT(ParseError("[1"),
              HasSubstr("expected ',' or ']' in array, got end of input"));
  EXPECT_THAT(ParseError("{1:2}"),
              HasSubstr("expected a string key in object, got '1'"));
  EXPECT_THAT(ParseError("{\"a\" 2}"),
              HasSubstr("expected ':' after object key, got '2'"));
  EXPECT_THAT(ParseError("{\"a\":2,}"),
              HasSubstr("expected a string key in object, got '}'"));
  EXPECT_THAT(ParseError("{\"a\":2 \"b\":3}"),
              HasSubstr("expected ',' or '}' in object"));
  EXPECT_THAT(ParseError("{\"a\":1,\"a\":2}"),
              HasSubstr("column 8: duplicate key \"a\" in object"));
  EXPECT_THAT(ParseError("1 2"),
              HasSubstr("column 3: expected end of input after the JSON "
                        "value, got '2'"));
  EXPECT_THAT(ParseError("{}x"), HasSubstr("expected end of input"));
  EXPECT_THAT(ParseError("\"abc"),
              HasSubstr("column 1: unterminated string"));
  EXPECT_THAT(ParseError("\"a\nb\""),
              HasSubstr("control character U+000A in string must be escaped"));
  EXPECT_THAT(ParseError(R"("\x")"), HasSubstr("invalid escape '\\x'"));
  EXPECT_THAT(ParseError(R"("\u12G4")"),
              HasSubstr("expected 4 hex digits after \\u, got 'G'"));
  EXPECT_THAT(ParseError(R"("\u12")"), HasSubstr("expected 4 hex digits"));
  EXPECT_THAT(ParseError(R"("\ud83d")"),
              HasSubstr("unpaired high surrogate \\uD83D"));
  EXPECT_THAT(ParseError(R"("\ud83dx")"),
              HasSubstr("unpaired high surrogate"));
  EXPECT_THAT(ParseError(R"("\ud83d\u0041")"),
              HasSubstr("followed by \\u0041, not a low surrogate"));
  EXPECT_THAT(ParseError(R"("\ude00")"),
              HasSubstr("unpaired low surrogate \\uDE00"));
  EXPECT_THAT(ParseError("\"\xFF\""), HasSubstr("invalid UTF-8 in string"));
  EXPECT_THAT(ParseError("\"\xC0\xAF\""), HasSubstr("invalid UTF-8"));  // overlong
  EXPECT_THAT(ParseError("\"\xED\xA0\x80\""), HasSubstr("invalid UTF-8"));  // surrogate
  EXPECT_THAT(ParseError("\"\xE4\xB8\""), HasSubstr("invalid UTF-8"));  // cut short
  EXPECT_THAT(ParseError("-"), HasSubstr("expected a digit in number"));
  EXPECT_THAT(ParseError("-a"), HasSubstr("expected a digit in number, got 'a'"));
  EXPECT_THAT(ParseError("012"), HasSubstr("leading zeros are not allowed"));
  EXPECT_THAT(ParseError("1."), HasSubstr("expected a digit after '.'"));
  EXPECT_THAT(ParseError("1e"), HasSubstr("expected a digit in exponent"));
  EXPECT_THAT(ParseError("1e+"), HasSubstr("expected a digit in exponent"));
  EXPECT_THAT(ParseError("+1"), HasSubstr("expected a value, got '+'"));
  EXPECT_THAT(ParseError("1e400"),
              HasSubstr("number 1e400 is out of double range"));
  EXPECT_THAT(ParseError("-1e99999999999999999999"),
              HasSubstr("out of double range"));
  EXPECT_THAT(ParseError("\x01"), HasSubstr("got byte 0x01"));
}

TEST(JsonErrors, LineAndColumnAfterNewlines) {
  EXPECT_THAT(ParseError("{\n  \"a\": 1,\n  \"b\" 2\n}"),
              HasSubstr("line 3, column 7: expected ':'"));
}

TEST(JsonErrors, DepthLimit) {
  const std::string ok = std::string(Json::kMaxDepth, '[') +
                         std::string(Json::kMaxDepth, ']');
  EXPECT_TRUE(Json::Parse(ok).ok());
  const std::string deep = std::string(Json::kMaxDepth + 1, '[') +
                           std::string(Json::kMaxDepth + 1, ']');
  EXPECT_THAT(ParseError(deep), HasSubstr("nesting deeper than 256 levels"));
  // Far deeper input fails the same way instead of exhausting the stack.
  EXPECT_THAT(ParseError(std::string(100000, '[')),
              HasSubstr("nesting deeper"));
}

}  // namespace
}  // namespace sheaf
