// The expert worker process, shared by moe-expert (LibTorch CPU experts, or
// the CUDA backend) and moe-expert-gpu (the CUDA backend, or the plain C++
// reference experts; no LibTorch): the same flags, checkpoint loading,
// expert selection, warm-up, service, TLS, health, metrics and drain. Each
// binary brings its own ShardFactory: how it turns the selected experts of
// a checkpoint into an ExpertShard on a device.
//
// Example (a main()):
//   int main(int argc, char** argv) {
//     return moe::server::RunWorker(argc, argv, "moe-expert", kUsage,
//                                   moe::server::MakeExpertShard);
//   }
#pragma once

#include "server/shard_request.h"

namespace moe::server {

// Parses the command line (program, usage: for --help), serves until
// SIGTERM or SIGINT, drains, and returns the exit code.
int RunWorker(int argc, char** argv, const char* program, const char* usage,
              const ShardFactory& make_shard);

}  // namespace moe::server
