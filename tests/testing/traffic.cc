#include "testing/traffic.h"

#include "client/router_client.h"
#include "testing/golden.h"
#include "testing/reference.h"

namespace moe::testing {

Traffic::Traffic(const std::string& target, const KnownForwards& in,
                 int threads, absl::Duration limit, double tolerance)
    : in_(in), until_(absl::Now() + limit) {
  for (int t = 0; t < threads; ++t) {
    threads_.emplace_back([this, target, t, tolerance] {
      client::ClientOptions o;
      o.timeout = absl::Seconds(10);
      o.max_attempts = 1;  // a failure is a failure, not hidden
      auto client = client::RouterClient::Create(target, o);
      for (int i = t; !stop_.load() && absl::Now() < until_; ++i) {
        const size_t k = i % in_.x.size();
        auto r = client->Forward(Request(in_.x[k], in_.wire));
        if (!r.ok() || r->degraded()) {
          std::lock_guard<std::mutex> lock(mu_);
          if (first_problem_.empty()) {
            first_problem_ = r.ok() ? "degraded" : r.status().ToString();
          }
          ++bad;
        } else if (MaxAbsDiff(Y(*r), in_.expected[k].y) > tolerance) {
          ++wrong;
        } else {
          ++ok;
        }
      }
    });
  }
}

void Traffic::Stop() {
  stop_ = true;
  for (std::thread& t : threads_) {
    if (t.joinable()) t.join();
  }
}

void Traffic::WaitForAnswers(int more) {
  const int from = ok.load();
  while (ok.load() < from + more && absl::Now() < until_) {
    absl::SleepFor(absl::Milliseconds(5));
  }
}

std::string Traffic::FirstProblem() {
  std::lock_guard<std::mutex> lock(mu_);
  return first_problem_;
}

}  // namespace moe::testing
