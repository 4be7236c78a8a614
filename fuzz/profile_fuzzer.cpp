// The profile reader (`cluster.profile`, `computron profile show|merge`) on arbitrary bytes:
// every outcome is a profile or a ConfigError. A profile read is then looked up the way the
// profiled cost model does (grids inside and far outside their points, decode graphs, idle and
// power extras), described, compared with itself (every ratio 1), and merged with itself whole and member by member: every time must be
// finite and not negative, and a profile merged with itself must read back. Anything else
// (another exception, a crash, a sanitizer report, a failed check) is a finding.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "common/json_reader.h"
#include "common/profile.h"
#include "common/profile_merge.h"
#include "fuzz_support.h"

namespace {

void check(double ms) {
  if (!std::isfinite(ms) || ms < 0) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace computron;
  Profile profile;
  nlohmann::json doc;
  try {
    doc = parseJsonText(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    fuzz::keepShort(doc);
    profile = readProfile(doc, "fuzz.json");
  } catch (const ConfigError&) {
    return 0;
  }
  for (const ModelProfile& m : profile.models) {
    for (double b : {0.5, 1.0, 3.0, 64.0, 4096.0})
      for (double t : {1.0, 17.0, 1000.0, 131072.0}) {
        check(m.prefill.at(b, t).ms);
        check(m.decode.at(b, t).ms);
      }
    for (int b : {1, 2, 9, 100000}) check(m.decodeGraphMs(b));
    for (double gap : {0.0, 10.0, 1e6}) check(m.idleExtraMs(gap));
    for (double busy : {0.0, 40.0, 1e7}) check(m.hotPrefillExtraMs(100, busy));
    check(m.prefill_shape.ms(4096, 4096.0 * 4097 / 2));
    (void)describeLookup(m, 8, 256);
  }
  (void)describeProfile(profile);
  // Against itself every shared grid point's ratio is exactly 1.
  for (const EntryDiff& e : diffProfiles(profile, profile).shared)
    for (const GridRatios& r : {e.prefill, e.decode})
      if (r.points > 0 && (r.min != 1 || r.max != 1)) std::abort();
  // Merged with itself, whole and member by member, it reads back (mergeProfiles validates).
  ProfileMergeOptions power;
  power.only = {"power", "decode_graph_ms", "idle"};
  (void)mergeProfiles(doc, "fuzz.json", {{"again.json", doc}}, {});
  (void)mergeProfiles(doc, "fuzz.json", {{"again.json", doc}}, power);
  return 0;
}
