// Chosen by CMake when the CUDA backend is not built.
#include "core/check.h"
#include "cuda_api.h"

namespace td::cuda {

bool compiled() { return false; }
int device_count() { return 0; }
std::string device_name(int) { throw Error("[cuda] tridecode was built without the CUDA backend"); }
void synchronize() { throw Error("[cuda] tridecode was built without the CUDA backend"); }
std::pair<size_t, size_t> memory_info() { throw Error("[cuda] tridecode was built without the CUDA backend"); }
std::pair<uint64_t, uint64_t> allocation_counts() {
  throw Error("[cuda] tridecode was built without the CUDA backend");
}
Backend& backend() {
  throw Error("[cuda] tridecode was built without the CUDA backend (rebuild with TRIDECODE_CUDA=ON, or TRIDECODE_CUDA=EMU for "
              "the CPU emulator)");
}

}  // namespace td::cuda
