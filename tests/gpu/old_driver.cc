// A stand-in for an NVIDIA driver older than the CUDA runtime the binaries
// carry (libcuda.so.1 of a driver for CUDA 12.4): what the runtime asks it
// first. gpu_check_without_device_test loads it in place of the driver to
// see the error name the versions.
extern "C" {
int cuDriverGetVersion(int* version) {
  *version = 12040;
  return 0;
}
int cuInit(unsigned int) { return 0; }
}
