#include "server/supervisor.h"

#include <signal.h>

#include <fstream>
#include <iterator>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace moe::server {
namespace {

// CPU time (utime + stime, clock ticks) of every thread of `pid` together.
long CpuTicks(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return -1;
  // Fields after "(comm)": state is the 3rd of stat(5), utime the 14th.
  std::vector<std::string> f =
      absl::StrSplit(stat.substr(close + 2), ' ', absl::SkipEmpty());
  if (f.size() < 13) return -1;
  return std::stol(f[11]) + std::stol(f[12]);
}

// A child of four threads, three of them always running.
std::unique_ptr<ChildProcess> Spinner() {
  ChildOptions options;
  options.argv = {"/usr/bin/python3", "-c",
                  "import threading, time\n"
                  "def spin():\n"
                  "  while True: pass\n"
                  "for _ in range(3):\n"
                  "  threading.Thread(target=spin, daemon=True).start()\n"
                  "time.sleep(60)\n"};
  auto child = ChildProcess::Start(std::move(options));
  EXPECT_TRUE(child.ok()) << child.status();
  return child.ok() ? std::move(*child) : nullptr;
}

TEST(ChildProcessTest, FreezeReturnsOnceNoThreadRuns) {
  auto child = Spinner();
  ASSERT_NE(child, nullptr);
  // Until its threads have started.
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (CpuTicks(child->pid()) < 10 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(10));
  }
  EXPECT_FALSE(child->Frozen());

  ASSERT_TRUE(child->Freeze());
  EXPECT_TRUE(child->Frozen());
  const long before = CpuTicks(child->pid());
  absl::SleepFor(absl::Milliseconds(200));
  EXPECT_EQ(CpuTicks(child->pid()), before) << "a thread ran while frozen";

  child->Signal(SIGCONT);
  const absl::Time thawed = absl::Now() + absl::Seconds(10);
  while (child->Frozen() && absl::Now() < thawed) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  EXPECT_FALSE(child->Frozen());
}

TEST(ChildProcessTest, FreezeOfAChildThatEndedIsFalse) {
  ChildOptions options;
  options.argv = {"/bin/true"};
  auto child = ChildProcess::Start(std::move(options));
  ASSERT_TRUE(child.ok()) << child.status();
  ASSERT_EQ((*child)->Wait(absl::Seconds(10)), 0);
  EXPECT_FALSE((*child)->Freeze(absl::Milliseconds(100)));
  EXPECT_FALSE((*child)->Frozen());
}

}  // namespace
}  // namespace moe::server
