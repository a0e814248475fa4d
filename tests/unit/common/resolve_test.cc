// ResolveAll: every address of a name, as the router and the balancer find
// workers behind one DNS name.
#include "common/resolve.h"

#include <gtest/gtest.h>

#include <algorithm>

namespace moe::common {
namespace {

TEST(ResolveAllTest, GivesEveryAddressWithThePort) {
  auto found = ResolveAll("localhost:50052");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_NE(std::find(found->begin(), found->end(), "127.0.0.1:50052"),
            found->end());
  EXPECT_TRUE(std::is_sorted(found->begin(), found->end()));
  auto literal = ResolveAll("127.0.0.7:9");
  ASSERT_TRUE(literal.ok());
  EXPECT_EQ(*literal, std::vector<std::string>{"127.0.0.7:9"});
}

TEST(ResolveAllTest, RefusesWhatIsNotNamePort) {
  for (const char* bad : {"localhost", ":50052", "localhost:", "localhost:0",
                          "localhost:70000", "localhost:x"}) {
    EXPECT_EQ(ResolveAll(bad).status().code(),
              absl::StatusCode::kInvalidArgument)
        << bad;
  }
  // (A name that does not resolve is NotFound; not tried here, since
  // asking for one would send a query beyond the loopback.)
}

}  // namespace
}  // namespace moe::common
