// moe-expert-gpu: the expert worker without LibTorch (nor OpenBLAS nor
// oneDNN), so that it and its libraries travel to a GPU machine
// (./moe gpu-bundle): the same worker process as moe-expert
// (server/worker.h) with the CUDA backend, or the host's reference experts
// where no GPU is (server/gpu_compute_flags.h).
//
//   moe-expert-gpu --checkpoint=model.safetensors --experts=0-7 --device=cuda
#include "server/gpu_compute_flags.h"
#include "server/worker.h"

int main(int argc, char** argv) {
  return moe::server::RunWorker(
      argc, argv, "moe-expert-gpu",
      "serves a share of the experts of every layer of a moe-serve "
      "checkpoint over gRPC (moe.v1.ExpertWorker) from a GPU, without "
      "LibTorch.\n\n  moe-expert-gpu --checkpoint=F --experts=0-7 "
      "--device=cuda --port=50052",
      moe::server::MakeGpuWorkerShard);
}
