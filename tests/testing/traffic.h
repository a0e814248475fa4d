// Load with known answers for the integration tests that break or move
// workers under it (chaos, placement): client threads sending forwards
// round-robin, each call once (a failure is a failure, not hidden by a
// retry), every outcome counted, bounded in time.
#pragma once

#include <ATen/ATen.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/time.h"
#include "moe/v1/router.pb.h"
#include "router/api/forward_runner.h"

namespace moe::testing {

// Inputs and their answers from the reference.
struct KnownForwards {
  std::vector<at::Tensor> x;
  std::vector<router::ForwardResult> expected;
  moe::v1::RoutingOptions wire;
};

class Traffic {
 public:
  // `threads` clients of the router at `target` send `in` (which must
  // outlive this) until Stop() or `limit` has passed; an answer further
  // than `tolerance` from its expected y is wrong.
  Traffic(const std::string& target, const KnownForwards& in, int threads,
          absl::Duration limit = absl::Seconds(60), double tolerance = 1e-5);
  ~Traffic() { Stop(); }

  void Stop();
  // Waits until `more` answers more came back whole and exact (or the
  // limit passed).
  void WaitForAnswers(int more);

  // Whole and exact; failed or degraded; whole but not exact.
  std::atomic<int> ok{0}, bad{0}, wrong{0};
  // The first failure's status, or "degraded".
  std::string FirstProblem();

 private:
  const KnownForwards& in_;
  const absl::Time until_;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  std::string first_problem_;
  std::vector<std::thread> threads_;
};

}  // namespace moe::testing
