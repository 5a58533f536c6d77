#include "coordinator/auth.h"

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sheaf::coordinator {
namespace {

constexpr char kTokens[] = R"(# tenants
alice-token-0123456789 alice
alice-second-token-xyz alice   # a second token for alice
  bob-token-9876543210   bob

worker-token-abcdefghij @worker
)";

TEST(TokenAuthenticatorTest, MapsTokensToCallers) {
  auto auth = TokenAuthenticator::FromText(kTokens);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->token_count(), 4u);
  auto alice = (*auth)->Authenticate("Bearer alice-token-0123456789");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_FALSE(alice->is_worker());
  EXPECT_EQ(alice->tenant, "alice");
  EXPECT_EQ((*auth)->Authenticate("bearer alice-second-token-xyz")->tenant,
            "alice");
  EXPECT_EQ((*auth)->Authenticate("Bearer bob-token-9876543210")->tenant, "bob");
  auto worker = (*auth)->Authenticate("Bearer worker-token-abcdefghij");
  ASSERT_TRUE(worker.ok());
  EXPECT_TRUE(worker->is_worker());
}

TEST(TokenAuthenticatorTest, RefusesMissingMalformedAndUnknownTokens) {
  auto auth = TokenAuthenticator::FromText(kTokens);
  ASSERT_TRUE(auth.ok());
  for (const char* header :
       {"", "alice-token-0123456789", "Basic YWxpY2U6eA==", "Bearer ",
        "Bearer alice-token-012345678", "Bearer alice-token-01234567890",
        "Bearer ALICE-TOKEN-0123456789", "Bearer worker-token-abcdefghiJ"}) {
    absl::Status status = (*auth)->Authenticate(header).status();
    EXPECT_TRUE(absl::IsUnauthenticated(status)) << header << ": " << status;
  }
  EXPECT_NE((*auth)->Authenticate("").status().message().find("missing"),
            std::string::npos);
}

TEST(TokenAuthenticatorTest, BadFilesNameTheLine) {
  struct Case {
    const char* text;
    const char* expected;
  };
  for (const Case& c : {
           Case{"short alice\n", "tokens:1: token is shorter than 16"},
           Case{"# x\nalice-token-0123456789\n", "tokens:2: expected"},
           Case{"alice-token-0123456789 alice extra\n", "tokens:1: expected"},
           Case{"alice-token-0123456789 a/b\n", "tokens:1: bad tenant name"},
           Case{"alice-token-0123456789 ..\n", "tokens:1: bad tenant name"},
           Case{"alice-token-0123456789 @admin\n", "tokens:1: bad tenant"},
           Case{"alice-token-0123456789 a\nalice-token-0123456789 b\n",
                "tokens:2: token appears more than once"},
       }) {
    absl::Status status = TokenAuthenticator::FromText(c.text).status();
    EXPECT_TRUE(absl::IsInvalidArgument(status)) << c.text;
    EXPECT_NE(status.message().find(c.expected), std::string::npos)
        << status << " (wanted " << c.expected << ")";
  }
}

TEST(TokenAuthenticatorTest, ReadsAFile) {
  const char* dir = std::getenv("TEST_TMPDIR");
  const std::string path = absl::StrCat(dir ? dir : "/tmp", "/tokens");
  std::ofstream(path) << kTokens;
  auto auth = TokenAuthenticator::FromFile(path);
  ASSERT_TRUE(auth.ok()) << auth.status();
  EXPECT_EQ((*auth)->token_count(), 4u);
  EXPECT_TRUE(absl::IsNotFound(
      TokenAuthenticator::FromFile(path + ".missing").status()));
}

TEST(RoleTest, TenantAndWorkerMethodsAreSeparate) {
  EXPECT_TRUE(RequireTenant(Caller::Tenant("alice"), "SubmitJob").ok());
  absl::Status status = RequireTenant(Caller::Worker(), "SubmitJob");
  EXPECT_TRUE(absl::IsPermissionDenied(status));
  EXPECT_NE(status.message().find("SubmitJob"), std::string::npos);
  EXPECT_TRUE(RequireWorker(Caller::Worker(), "AcquireJob").ok());
  EXPECT_TRUE(absl::IsPermissionDenied(
      RequireWorker(Caller::Tenant("alice"), "AcquireJob")));
}

TEST(TenantNameTest, Rules) {
  EXPECT_TRUE(IsValidTenantName("alice"));
  EXPECT_TRUE(IsValidTenantName("team-7.nlp_group"));
  EXPECT_FALSE(IsValidTenantName(""));
  EXPECT_FALSE(IsValidTenantName(".hidden"));
  EXPECT_FALSE(IsValidTenantName("a b"));
  EXPECT_FALSE(IsValidTenantName(std::string(65, 'a')));
}

}  // namespace
}  // namespace sheaf::coordinator
