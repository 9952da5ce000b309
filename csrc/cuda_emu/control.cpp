// td::cuda's view of the emulator (cuda_api.h): settings and the launch log, for tests and tools.
#include "core/check.h"
#include "cuda_api.h"
#include "cuda_emu/state.h"

namespace td::cuda {

bool emulated() { return true; }

std::vector<std::pair<std::string, int64_t>> emu_settings() {
  const td_emu::Settings& s = td_emu::settings();
  return {{"sm_count", s.sm_count},
          {"memory_bytes", static_cast<int64_t>(s.memory_bytes)},
          {"reverse", s.reverse ? 1 : 0},
          {"stack_bytes", static_cast<int64_t>(s.stack_bytes)},
          {"static_shared_limit", static_cast<int64_t>(s.static_shared_limit)},
          {"shared_optin_limit", static_cast<int64_t>(s.shared_optin_limit)},
          {"record_launches", s.record_launches ? 1 : 0},
          {"count_traffic", s.count_traffic ? 1 : 0}};
}

void emu_configure(const std::string& key, int64_t v) {
  td_emu::Settings& s = td_emu::settings();
  auto need = [&](bool ok, const char* what) {
    TD_CHECK(ok, "[cuda-emu] ", key, " = ", v, ": ", what);
  };
  if (key == "sm_count") {
    need(v >= 1 && v <= 100000, "expected an SM count in [1, 100000]");
    s.sm_count = static_cast<int>(v);
  } else if (key == "memory_bytes") {
    need(v > 0, "expected a positive byte count");
    s.memory_bytes = static_cast<size_t>(v);
  } else if (key == "reverse" || key == "record_launches" || key == "count_traffic") {
    need(v == 0 || v == 1, "expected 0 or 1");
#ifndef TD_EMU_COUNTS_TRAFFIC
    need(key != "count_traffic" || v == 0,
         "this build cannot count traffic (an AddressSanitizer build has no access instrumentation)");
#endif
    (key == "reverse" ? s.reverse : key == "record_launches" ? s.record_launches : s.count_traffic) = v == 1;
  } else if (key == "stack_bytes") {
    need(v >= 16384 && v <= (int64_t{1} << 30), "expected a stack size in [16 KiB, 1 GiB]");
    s.stack_bytes = static_cast<size_t>(v);
  } else if (key == "static_shared_limit" || key == "shared_optin_limit") {
    need(v > 0 && v <= (int64_t{1} << 30), "expected a positive byte count");
    (key == "static_shared_limit" ? s.static_shared_limit : s.shared_optin_limit) = static_cast<size_t>(v);
  } else {
    throw Error("[cuda-emu] unknown setting '" + key +
                "' (sm_count, memory_bytes, reverse, stack_bytes, static_shared_limit, shared_optin_limit, "
                "record_launches, count_traffic)");
  }
}

std::vector<std::pair<std::string, int64_t>> emu_counters() { return td_emu::graph_counters(); }

std::vector<EmuLaunch> emu_take_launches() {
  std::vector<EmuLaunch> out;
  for (auto& r : td_emu::take_launch_log())
    out.push_back(EmuLaunch{std::move(r.kernel), std::move(r.template_args), {r.grid[0], r.grid[1], r.grid[2]},
                            {r.block[0], r.block[1], r.block[2]}, r.dynamic_shared, r.static_shared, r.seconds,
                            r.counted, r.traffic.load_bytes, r.traffic.store_bytes});
  return out;
}

}  // namespace td::cuda
