// Builds without the CUDA emulator (real CUDA or none): there is nothing to configure.
#include "core/check.h"
#include "cuda_api.h"

namespace td::cuda {

namespace {
[[noreturn]] void no_emulator() {
  throw Error("[cuda] this build does not emulate CUDA (rebuild with TRIDECODE_CUDA=EMU)");
}
}  // namespace

bool emulated() { return false; }
std::vector<std::pair<std::string, int64_t>> emu_settings() { no_emulator(); }
void emu_configure(const std::string&, int64_t) { no_emulator(); }
std::vector<EmuLaunch> emu_take_launches() { no_emulator(); }
std::vector<std::pair<std::string, int64_t>> emu_counters() { no_emulator(); }

}  // namespace td::cuda
