// moe-expert: a gRPC worker hosting a share of the experts of every layer
// of a checkpoint, on the CPU through LibTorch (and the AVX-512 kernel) or,
// where the CUDA backend is built, on a GPU. The process is the shared
// worker (server/worker.h); its shards come from server/compute_flags.h.
//
//   moe-expert --checkpoint=model.safetensors --experts=0-7 --port=50052
//
// Health (process and moe.v1.ExpertWorker) turns SERVING once the weights
// are loaded. SIGTERM/SIGINT drain in-flight calls and stop.
#include "server/compute_flags.h"
#include "server/worker.h"

int main(int argc, char** argv) {
  return moe::server::RunWorker(
      argc, argv, "moe-expert",
      "serves a share of the experts of every layer of a moe-serve "
      "checkpoint over gRPC (moe.v1.ExpertWorker).\n\n  moe-expert "
      "--checkpoint=F --experts=0-7 --port=50052",
      moe::server::MakeExpertShard);
}
